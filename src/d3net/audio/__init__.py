"""Audio for music source separation: file I/O and resampling (:mod:`.io`), the STFT
(:mod:`.spectral`) and the multichannel Wiener filter (:func:`.wiener.wiener`)."""
from . import io, spectral, wiener
from .io import load, resample, save
from .spectral import HOP, N_FFT, SAMPLE_RATE, istft, magnitude, stft

__all__ = ["io", "spectral", "wiener", "load", "save", "resample", "stft", "istft", "magnitude",
           "N_FFT", "HOP", "SAMPLE_RATE"]
