"""ops: custom operators (window-based cross-frame attention)."""

from sdcpc_core.ops.window_attention import backend, window_attention

__all__ = ["backend", "window_attention"]
