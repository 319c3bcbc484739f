"""D3Net in PyTorch."""
