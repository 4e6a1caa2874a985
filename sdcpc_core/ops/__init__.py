"""ops: custom operators (window-based cross-frame attention)."""

from sdcpc_core.ops.window_attention import backend, window_attention, window_attention_fixed

__all__ = ["backend", "window_attention", "window_attention_fixed"]
