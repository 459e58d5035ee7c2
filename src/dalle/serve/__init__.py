"""`dalle serve`: a web page and a JSON API that generate images with a pipeline."""

from dalle.serve.app import create_app

__all__ = ["create_app"]
