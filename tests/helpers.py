"""Small datasets and runs shared by the tests."""

import socket
import threading
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dalle.config import TrainConfig, VAEConfig
from dalle.train import Trainer
from dalle.train.vae import VAELoss
from dalle.vae import DiscreteVAE


class RandomImages(Dataset):
    """n fixed random 16x16 images with captions, deterministic by seed."""

    def __init__(self, n: int = 24, size: int = 16, seed: int = 0, flat: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        shape = (n, 3, 1, 1) if flat else (n, 3, size, size)
        self.images = torch.rand(*shape, generator=g).expand(n, 3, size, size).contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "caption": f"image {i}", "index": i}


def tiny_train_config(**kwargs) -> TrainConfig:
    defaults = dict(steps=8, batch_size=8, lr=3e-3, warmup_steps=2, ema_decay=0.9, grad_clip=1.0,
                    device="cpu", log_every=2, sample_every=0, checkpoint_every=4)
    return TrainConfig(**{**defaults, **kwargs})


def make_trainer(out_dir, config: TrainConfig, resume: bool = False, dataset=None) -> Trainer:
    torch.manual_seed(config.seed)
    model = DiscreteVAE(VAEConfig.tiny())
    return Trainer(model, dataset or RandomImages(), config, out_dir, VAELoss(config.seed),
                   resume=resume, show_progress=False)


def image_folder(root, n: int = 24, size: int = 16, seed: int = 0):
    """Write n random RGB png images with `.txt` captions into root; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
        (root / f"{i:03d}.txt").write_text(f"image {i}")
    return root


def tiny_prior_data(root) -> None:
    """A tokenizer and a codes directory (from the tiny dVAE) under `root`, for prior tests."""
    from pathlib import Path

    from dalle.text import TextTokenizer
    from dalle.train.codes import encode_dataset

    root = Path(root)
    captions = [f"a {c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square")]
    data = RandomImages(n=24)
    data.captions = [captions[i % len(captions)] + (" on the left" if i % 4 == 0 else "")
                     for i in range(len(data))]
    TextTokenizer.train(data.captions, bpe_vocab_size=300, text_length=16,
                        bpe_dropout=0.1).save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    vae = DiscreteVAE(VAEConfig.tiny()).eval()
    vae.save_pretrained(root / "vae")
    items = [{**data[i], "caption": data.captions[i]} for i in range(len(data))]
    encode_dataset(vae, items, root / "codes", batch_size=8, show_progress=False)


def tiny_prior_config(root, **kwargs):
    """A tiny PriorConfig that matches the data of `tiny_prior_data(root)`."""
    from pathlib import Path

    from dalle.config import PriorConfig
    from dalle.text import TextTokenizer

    tokenizer = TextTokenizer.from_pretrained(Path(root) / "tokenizer").config
    defaults = dict(text_vocab_size=tokenizer.text_vocab_size, text_length=tokenizer.text_length,
                    codebook_size=32, grid_size=4, dim=32, depth=3, heads=2, head_dim=16,
                    conv_kernel=3)
    return PriorConfig(**{**defaults, **kwargs})


def one_and_two_processes(script, args_one: list, args_two: list) -> None:
    """Run `script` alone, then under torchrun with 2 gloo processes; both must succeed."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    single = subprocess.run([sys.executable, str(script), *map(str, args_one)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(script), *map(str, args_two)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]


def assert_same_weights(path_one, path_two) -> None:
    """The two model directories hold the same tensors up to float summation order."""
    from safetensors.torch import load_file

    one = load_file(path_one / "model.safetensors")
    two = load_file(path_two / "model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=2e-5, rtol=1e-4, msg=k)


@contextmanager
def serving(app):
    """Run an ASGI `app` with uvicorn on a free port of 127.0.0.1 in a thread; gives its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            thread.join(0.05)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
