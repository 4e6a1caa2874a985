"""Training losses: MCP-CL (multivariate class prototypes + contrastive learning)."""

from .mcp_cl import MCPContrastiveLoss, spherical_kmeans

__all__ = ["MCPContrastiveLoss", "spherical_kmeans"]
