"""LangGraph integration: decorate a graph's nodes so that they run on a Lattice cluster."""

from lattice.client.langgraph.client import LangGraphClient

__all__ = ["LangGraphClient"]
