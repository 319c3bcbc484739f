"""Audio for music source separation: file I/O and resampling (:mod:`.io`), the STFT
(:mod:`.spectral`) and the multichannel Wiener filter (:mod:`.wiener`)."""
from . import io, spectral, wiener

__all__ = ["io", "spectral", "wiener"]
