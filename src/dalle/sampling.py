"""Sampling image codes from the prior (paper §2.6), with a KV cache that knows the layouts.

`sample_codes` draws a batch of code grids for given text ids, one image position at a time in
raster order. Each layer's cache keeps only what its layout can still see (`LayerCache`), so a
step costs O(T + window) per layer and the prefix is never recomputed. Options: temperature,
top-k, top-p, classifier-free guidance (conditional and unconditional streams batched together,
each with its own cache rows), and inpainting: given codes and a mask, keep the unmasked codes and
sample the masked ones in raster order (completion from the first rows is the special case of a
mask that covers the rest). Everything random comes from one seeded generator, so the same seed
gives the same images on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dalle.attention import keep_plans_out_of_compilation
from dalle.errors import DalleError
from dalle.prior import Prior


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Temperature, then keep the top-k logits, then the smallest set with probability >= top-p."""
    if temperature <= 0:
        raise DalleError(f"temperature must be positive, got {temperature}")
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise DalleError(f"top_k must be at least 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise DalleError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already hold top_p (the first always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of (B, K) probabilities, by inverting the CDF at a uniform draw.

    One random number per row rather than K (`torch.multinomial` draws K exponentials), which
    matters when sampling runs one token at a time.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(len(probs), 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]
    return index.clamp_(max=probs.shape[-1] - 1)


def _check_inputs(prior: Prior, text: torch.Tensor, unconditional: torch.Tensor | None,
                  guidance_scale: float, codes: torch.Tensor | None,
                  mask: torch.Tensor | None) -> None:
    c = prior.config
    if text.ndim != 2 or text.shape[1] != c.text_length + 1:
        raise DalleError(f"text must be (batch, {c.text_length + 1}) ids, got {tuple(text.shape)}")
    if guidance_scale != 1.0 and unconditional is None:
        raise DalleError("classifier-free guidance needs the unconditional text ids "
                         "(the empty caption's encoding)")
    grid = (c.grid_size, c.grid_size)
    if (codes is None) != (mask is None):
        raise DalleError("inpainting needs both codes and a mask")
    if codes is not None and tuple(codes.shape[-2:]) != grid:
        raise DalleError(f"codes to complete must be {grid[0]}x{grid[1]}, got {tuple(codes.shape)}")
    if mask is not None and tuple(mask.shape[-2:]) != grid:
        raise DalleError(f"the inpainting mask must be {grid[0]}x{grid[1]} over the code grid, "
                         f"got {tuple(mask.shape)}")


def graphed_step(prior: Prior, cache: list, batch: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """`prior.step` captured once as a CUDA graph and replayed at every position.

    A small prior's step is hundreds of tiny kernels, so on a GPU it costs their launches, not
    their arithmetic; a replay is one launch. The position travels as a device tensor (see
    `LayerCache.step`), so one capture serves every position. The returned logits are a buffer
    that the next call overwrites.
    """
    device = cache[0].k.device
    code = torch.zeros(batch, dtype=torch.long, device=device)
    position = torch.ones((), dtype=torch.long, device=device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # lazy initialisation and kernel choice happen outside the capture
        prior.step(code, position, cache)  # writes position 1's slot, which its real step overwrites
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = prior.step(code, position, cache)

    def step(previous: torch.Tensor, at: int) -> torch.Tensor:
        code.copy_(previous)
        position.fill_(at)
        graph.replay()
        return logits

    return step


def compiled_step(prior: Prior, cache: list) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """`prior.step` compiled by `torch.compile` with the weights frozen into the code.

    On a CPU a small prior's step at a small batch is bound by the overhead of its few hundred
    operators, not by their arithmetic. Compiled, the norms, activations, residual adds and the
    cache attention fuse into a few loops, and freezing (inductor's `freezing`) folds the weights
    in as constants. The position travels as a tensor, so one compilation serves every position
    of a grid; the first other batch size compiles once more, with the batch dynamic, and that
    serves every batch after it (torch's automatic dynamic shapes). Each prior compiles its own,
    and torch keeps at most `torch._dynamo.config.recompile_limit` (8) versions of the step per
    process before it warns and runs eagerly. Frozen weights are why this is for sampling a
    finished prior only: a weight changed after the first call is not seen.
    """
    keep_plans_out_of_compilation()
    step = torch.compile(prior.step, options={"freezing": True})
    position = torch.ones((), dtype=torch.long, device=cache[0].k.device)

    def compiled(previous: torch.Tensor, at: int) -> torch.Tensor:
        position.fill_(at)
        return step(previous, position, cache)

    return compiled


def cached_step(prior: Prior, cache: list, batch: int, cuda_graph: bool,
                compile: bool = False) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The cached step after `prior.prefill` as (codes, position) -> logits: replayed as a CUDA
    graph (`graphed_step`) when `cuda_graph`, compiled (`compiled_step`) when `compile`, else
    `prior.step` itself."""
    if cuda_graph:
        return graphed_step(prior, cache, batch)
    if compile:
        return compiled_step(prior, cache)
    return lambda code, at: prior.step(code, at, cache)


@torch.no_grad()
def sample_codes(prior: Prior, text: torch.Tensor, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 guidance_scale: float = 1.0, unconditional: torch.Tensor | None = None,
                 codes: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 cuda_graph: bool = True, compile: bool = False, autocast: bool = False,
                 progress: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """(B, G, G) codes sampled for text ids (B, T + 1).

    guidance_scale: 1 is plain sampling; s > 1 samples from uncond + s * (cond - uncond) logits,
        with `unconditional` the (T + 1,) or (B, T + 1) ids of the empty caption.
    codes, mask: inpainting. Where `mask` (G, G) or (B, G, G) is True the code is sampled; elsewhere
        `codes` is kept (and fed to the model as context).
    use_cache: False recomputes the whole stream at every step (the reference the cache is
        tested against; much slower).
    cuda_graph: on CUDA, replay each cached step as one captured graph (`graphed_step`); the
        same tokens as without, several times faster for small priors.
    compile: elsewhere (on a CPU), run each cached step compiled with frozen weights
        (`compiled_step`): the same tokens, faster once the first call has compiled it (tens of
        seconds, less when inductor's cache on disk has it); worth it for many images.
    autocast: bf16 autocast on the prior's device.
    progress: called after each step with the number of image positions done and the (B, G, G)
        codes so far (positions not drawn yet are 0; a view of the grid being filled, so copy
        what you keep).
    """
    _check_inputs(prior, text, unconditional, guidance_scale, codes, mask)
    c = prior.config
    device = prior.device
    B, n = len(text), c.grid_size**2
    text = text.to(device)
    guided = guidance_scale != 1.0
    if guided:
        assert unconditional is not None  # _check_inputs raised otherwise
        uncond = unconditional.to(device).expand(B, -1) if unconditional.ndim == 1 else unconditional.to(device)
        text = torch.cat([text, uncond])
    keep = None
    if mask is not None:
        assert codes is not None  # _check_inputs raised otherwise
        keep = ~mask.to(device).expand(B, -1, -1).flatten(1)
        given = codes.to(device).expand(B, -1, -1).flatten(1).long()
    out = torch.zeros(B, n, dtype=torch.long, device=device)

    def choose(logits: torch.Tensor, position: int) -> torch.Tensor:
        if guided:
            cond, uncond_logits = logits.chunk(2)
            logits = uncond_logits + guidance_scale * (cond - uncond_logits)
        logits = filter_logits(logits, temperature, top_k, top_p)
        sampled = draw(F.softmax(logits, -1), generator)
        if keep is not None:
            sampled = torch.where(keep[:, position], given[:, position], sampled)
        return sampled

    graphed = use_cache and cuda_graph and device.type == "cuda" and n > 1
    was_training = prior.training
    prior.eval()
    try:
        # A graph must not capture autocast's cached weight casts (their memory is freed later).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast, cache_enabled=not graphed):
            if use_cache:
                cache = prior.new_cache()
                logits = prior.prefill(text, cache)
                step = cached_step(prior, cache, len(text), graphed, compile and n > 1)
            for position in range(n):
                if not use_cache:
                    # Codes not drawn yet are zeros; causality keeps them out of this position.
                    stream = out[:, : n - 1].repeat(2, 1) if guided else out[:, : n - 1]
                    h = prior.hidden_states(text, stream)
                    logits = prior.image_head(h[:, c.text_length + position]).float()
                elif position > 0:
                    previous = out[:, position - 1]
                    logits = step(previous.repeat(2) if guided else previous, position)
                out[:, position] = choose(logits, position)
                if progress is not None:
                    progress(position + 1, out.view(B, c.grid_size, c.grid_size))
    finally:
        prior.train(was_training)
    return out.view(B, c.grid_size, c.grid_size)


def completion_mask(grid: int, keep_rows: int) -> torch.Tensor:
    """The inpainting mask that keeps the first `keep_rows` rows and samples the rest (§2.6:
    the paper prompts with the top rows of an image)."""
    if not 0 <= keep_rows < grid:
        raise DalleError(f"keep_rows must be in [0, {grid - 1}] for a {grid}x{grid} grid, got {keep_rows}")
    mask = torch.ones(grid, grid, dtype=torch.bool)
    mask[:keep_rows] = False
    return mask
