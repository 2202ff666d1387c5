"""Serving taggers over HTTP and WebSocket: ``earmark serve`` (needs ``earmark[serve]``)."""

from earmark.serve.app import ServeOptions, create_app, load_models
from earmark.serve.events import EventTracker

__all__ = ["EventTracker", "ServeOptions", "create_app", "load_models"]
