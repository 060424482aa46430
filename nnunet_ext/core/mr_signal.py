"""MR physics for simulated scanners: signal equations, tissue relaxation tables, Rician noise, receive bias.

Everything is magnitude signal in units of the equilibrium magnetisation of pure water (``M0 = 1``), times
in milliseconds, flip angles in degrees. Functions take floats or tensors and broadcast.

Signal equations (perfect, instantaneous RF pulses; ideal spoiling; no magnetisation transfer, diffusion or
flow):

* **Spoiled gradient echo** (SPGR / FLASH / T1-FFE, steady state), :func:`spgr_signal`::

      S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE / T2*),     E1 = exp(-TR / T1)

* **Inversion-prepared gradient echo** (MPRAGE, Philips' TFE with an inversion prepulse, GE's IR-SPGR),
  :func:`mprage_signal`: every ``TR`` (the inversion period) an inversion of efficiency ``d`` is followed,
  after ``TA``, by ``N`` readout pulses of flip ``a`` every ``tau`` ms, then ``TD`` of free recovery. With
  ``E_t = exp(-t / T1)``, ``c = cos(a) E_tau`` and ``b = 1 - E_tau`` a train of ``n`` pulses maps the
  longitudinal magnetisation ``m -> m c^n + b (1 - c^n) / (1 - c)``; composing inversion, ``TA``, the
  train and ``TD`` gives the affine period map ``m -> p m + q`` whose fixed point ``m* = q / (1 - p)`` is the
  steady state before the inversion. The signal is read at pulse ``k = round(centre N)`` (the centre of
  k-space; ``centre = 0.5`` for linear ordering, ``0`` for centric), so ``TI`` (inversion to the centre of
  k-space) fixes ``TA = TI - k tau`` and ``TD = TR - TA - N tau``::

      S = PD sin(a) |m_k| exp(-TE / T2*)

  Limits (tested): for a vanishing flip angle it is inversion recovery, ``|1 - 2 E_TI / (1 + E_TR)|``
  (``d = 1``); deep into a long train the preparation is forgotten and it is :func:`spgr_signal` with
  ``TR = tau``.
* **Spin echo** (90-180), :func:`spin_echo_signal`::

      S = PD (1 - 2 exp(-(TR - TE/2) / T1) + exp(-TR / T1)) exp(-TE / T2)

Partial volume: a voxel holding tissue fractions ``p_t`` has the signal ``sum_t p_t S_t``
(:func:`partial_volume_signal`): magnetisation adds, relaxation times do not.

Tissue values (:data:`TISSUES`, per field strength; ``pd`` relative to pure water):

======  ==========  =====================  ======================  ===================
tissue  PD          T1 (ms) 1.5 T / 3 T    T2 (ms) 1.5 T / 3 T     T2* (ms) 1.5 T / 3 T
======  ==========  =====================  ======================  ===================
WM      0.65        656 / 832              72 / 69                 66.2 / 53.2
GM      0.78        1188 / 1331            95 / 99                 84.0 / 66.0
CSF     0.97        4329 / 4329            503 / 503               503 / 503
======  ==========  =====================  ======================  ===================

Sources: PD = brain water content of Ernst, Kreis & Ross, J Magn Reson B 102:1-8 (1993); T1 at 1.5 T and
CSF T1 at both fields from Rooney et al., Magn Reson Med 57:308-318 (2007), who found CSF T1 independent of
field; T1 of GM/WM at 3 T from Wansapura et al., J Magn Reson Imaging 9:531-538 (1999); T2 of GM/WM from
Stanisz et al., Magn Reson Med 54:507-512 (2005); CSF T2 from Piechnik et al., Magn Reson Med 61:579-586
(2009, 3 T; used at both fields); T2* of GM/WM from Peters et al., Magn Reson Imaging 25:748-753 (2007).
No CSF T2* was taken from the literature: it is set to the CSF T2 (an upper bound; at the gradient-echo
echo times used here, <= 5 ms, it changes the CSF signal by < 1 %). Published T1 values of one tissue at
one field differ between methods (0.6 to 1.1 s for white matter at 3 T; Assländer, arXiv:2409.05318, 2024);
the table is one choice with in-vivo T1 values, not a consensus.

Noise (:func:`rician_noise`): the magnitude of the signal plus complex white Gaussian noise,
``|S + sigma (n_re + i n_im)|``: Rayleigh in the background, nearly Gaussian where ``S >> sigma``.

Receive bias (:func:`receive_bias`): a smooth positive multiplicative field ``exp(f)``, with ``f`` a sum of
a radial term (sensitivity of a receive array rises towards its coils), a linear term (coil placement) and
a low-frequency standing-wave term with a phase.

Example:
    >>> wm, gm = TISSUES[3.0]["wm"], TISSUES[3.0]["gm"]
    >>> signal = lambda t: spgr_signal(t.pd, t.t1_ms, t.t2s_ms, tr=20.0, te=4.0, flip_deg=25.0)
    >>> bool(signal(wm) > signal(gm))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Number = float | torch.Tensor


@dataclass(frozen=True)
class Tissue:
    """MR properties of one tissue at one field strength.

    Attributes:
        pd: proton density relative to pure water.
        t1_ms: longitudinal relaxation time.
        t2_ms: transverse relaxation time.
        t2s_ms: effective transverse relaxation time T2*.
    """

    pd: float
    t1_ms: float
    t2_ms: float
    t2s_ms: float


#: field strength (T) -> tissue -> properties; sources in the module docstring
TISSUES: dict[float, dict[str, Tissue]] = {
    1.5: {
        "csf": Tissue(pd=0.97, t1_ms=4329.0, t2_ms=503.0, t2s_ms=503.0),
        "gm": Tissue(pd=0.78, t1_ms=1188.0, t2_ms=95.0, t2s_ms=84.0),
        "wm": Tissue(pd=0.65, t1_ms=656.0, t2_ms=72.0, t2s_ms=66.2),
    },
    3.0: {
        "csf": Tissue(pd=0.97, t1_ms=4329.0, t2_ms=503.0, t2s_ms=503.0),
        "gm": Tissue(pd=0.78, t1_ms=1331.0, t2_ms=99.0, t2s_ms=66.0),
        "wm": Tissue(pd=0.65, t1_ms=832.0, t2_ms=69.0, t2s_ms=53.2),
    },
}

#: literature behind :data:`TISSUES`, keyed by what each source gave
TISSUE_SOURCES: dict[str, str] = {
    "pd": "Ernst T, Kreis R, Ross BD. Absolute quantitation of water and metabolites in the human brain. I. "
          "Compartments and water. J Magn Reson B 102:1-8, 1993 (water content GM 0.78, WM 0.65, CSF 0.97)",
    "t1_1.5T_and_csf": "Rooney WD et al. Magnetic field and tissue dependencies of human brain longitudinal 1H2O "
                       "relaxation in vivo. Magn Reson Med 57:308-318, 2007 (1.5 T: WM 656, GM 1188, CSF 4329 ms; "
                       "CSF T1 independent of field)",
    "t1_3T": "Wansapura JP, Holland SK, Dunn RS, Ball WS. NMR relaxation times in the human brain at 3.0 tesla. "
             "J Magn Reson Imaging 9:531-538, 1999 (WM 832, GM 1331 ms)",
    "t2": "Stanisz GJ et al. T1, T2 relaxation and magnetization transfer in tissue at 3T. Magn Reson Med "
          "54:507-512, 2005 (WM 72 / 69 ms, GM 95 / 99 ms at 1.5 / 3 T)",
    "t2_csf": "Piechnik SK et al. Functional changes in CSF volume estimated using measurement of water T2 "
              "relaxation. Magn Reson Med 61:579-586, 2009 (CSF 503 ms at 3 T; used at 1.5 T too)",
    "t2star": "Peters AM et al. T2* measurements in human brain at 1.5, 3 and 7 T. Magn Reson Imaging "
              "25:748-753, 2007 (GM 84.0 / 66.0 ms, WM 66.2 / 53.2 ms at 1.5 / 3 T)",
    "t2star_csf": "none: CSF T2* set to the CSF T2 (upper bound)",
}


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of milliseconds, got {value!r}")


def _flip(flip_deg: float) -> float:
    if isinstance(flip_deg, bool) or not isinstance(flip_deg, (int, float)) or not 0 < flip_deg <= 180:
        raise ValueError(f"flip_deg must be a flip angle in (0, 180] degrees, got {flip_deg!r}")
    return math.radians(flip_deg)


def _echo(te: float) -> None:
    if isinstance(te, bool) or not isinstance(te, (int, float)) or te < 0:
        raise ValueError(f"te must be an echo time >= 0 ms, got {te!r}")


def _tensor(x: Number) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)


def spgr_signal(pd: Number, t1: Number, t2s: Number, *, tr: float, te: float, flip_deg: float) -> torch.Tensor:
    """Steady-state spoiled gradient echo signal (see the module docstring).

    Args:
        pd: proton density.
        t1: T1 in ms.
        t2s: T2* in ms.
        tr: repetition time in ms (> 0).
        te: echo time in ms (>= 0).
        flip_deg: flip angle in degrees, (0, 180].

    Returns:
        The signal, broadcast over the tissue arguments.

    Raises:
        ValueError: a sequence parameter out of range.
    """
    _positive("tr", tr)
    _echo(te)
    a = _flip(flip_deg)
    e1 = torch.exp(-tr / _tensor(t1))
    return _tensor(pd) * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * torch.exp(-te / _tensor(t2s))


def mprage_signal(pd: Number, t1: Number, t2s: Number, *, tr: float, ti: float, te: float, flip_deg: float,
                  echo_spacing: float, readouts: int, centre: float = 0.5,
                  inversion_efficiency: float = 1.0) -> torch.Tensor:
    """Steady-state signal of an inversion-prepared gradient-echo train (MPRAGE / TFE), read at the centre of
    k-space (see the module docstring for the model).

    Args:
        pd: proton density.
        t1: T1 in ms.
        t2s: T2* in ms.
        tr: inversion period in ms (Siemens' TR of MPRAGE, Philips' shot interval).
        ti: inversion time in ms, from the inversion to the readout at the centre of k-space.
        te: echo time in ms.
        flip_deg: readout flip angle in degrees.
        echo_spacing: time between readout pulses in ms (the gradient-echo TR of the train).
        readouts: readout pulses per inversion (>= 1).
        centre: position of the centre of k-space in the train, 0 (centric) .. 1; 0.5 for linear ordering.
        inversion_efficiency: ``d`` in [0, 1]: the inversion maps ``m -> -d m`` (1: perfect inversion, 0: a
            saturation pulse).

    Returns:
        The magnitude signal, broadcast over the tissue arguments.

    Raises:
        ValueError: a parameter out of range, or timings that do not fit (``TA < 0`` or ``TD < 0``; the message
            gives both).
    """
    for name, value in (("tr", tr), ("echo_spacing", echo_spacing)):
        _positive(name, value)
    _echo(te)
    a = _flip(flip_deg)
    if isinstance(readouts, bool) or not isinstance(readouts, int) or readouts < 1:
        raise ValueError(f"readouts must be an integer >= 1, got {readouts!r}")
    if not 0 <= centre <= 1:
        raise ValueError(f"centre must be in [0, 1] (0 centric, 0.5 linear ordering), got {centre!r}")
    if not 0 <= inversion_efficiency <= 1:
        raise ValueError(f"inversion_efficiency must be in [0, 1], got {inversion_efficiency!r}")
    k = round(centre * readouts)
    ta = ti - k * echo_spacing
    td = tr - ta - readouts * echo_spacing
    if ta < 0 or td < 0:
        raise ValueError(
            f"timings do not fit: TA = ti - k * echo_spacing = {ta:g} ms and TD = tr - TA - readouts * echo_spacing "
            f"= {td:g} ms must both be >= 0 (k = {k}); lengthen tr or ti, or use fewer readouts")
    t1 = _tensor(t1)
    e_a, e_d, e_tau = torch.exp(-ta / t1), torch.exp(-td / t1), torch.exp(-echo_spacing / t1)
    c, b = math.cos(a) * e_tau, 1 - e_tau

    def train(m: torch.Tensor, n: int) -> torch.Tensor:
        cn = c ** n
        return m * cn + b * (1 - cn) / (1 - c)

    def after_ta(m: torch.Tensor) -> torch.Tensor:  # inversion, then TA of recovery
        return -inversion_efficiency * m * e_a + (1 - e_a)

    q = train(after_ta(torch.zeros_like(t1)), readouts) * e_d + (1 - e_d)
    p = -inversion_efficiency * e_a * c ** readouts * e_d
    steady = q / (1 - p)
    m_k = train(after_ta(steady), k)
    return _tensor(pd) * math.sin(a) * m_k.abs() * torch.exp(-te / _tensor(t2s))


def spin_echo_signal(pd: Number, t1: Number, t2: Number, *, tr: float, te: float) -> torch.Tensor:
    """90-180 spin-echo signal with full recovery terms (see the module docstring).

    Args:
        pd: proton density.
        t1: T1 in ms.
        t2: T2 in ms.
        tr: repetition time in ms (> te).
        te: echo time in ms (>= 0).

    Returns:
        The signal, broadcast over the tissue arguments.

    Raises:
        ValueError: a parameter out of range.
    """
    _positive("tr", tr)
    _echo(te)
    if te >= tr:
        raise ValueError(f"te must be shorter than tr, got te={te!r} ms and tr={tr!r} ms")
    t1 = _tensor(t1)
    recovery = 1 - 2 * torch.exp(-(tr - te / 2) / t1) + torch.exp(-tr / t1)
    return _tensor(pd) * recovery * torch.exp(-te / _tensor(t2))


def partial_volume_signal(fractions: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
    """Signal of voxels holding tissue ``fractions``: ``sum_t fractions[t] * signals[t]``.

    Shape:
        fractions: ``(T, *spatial)``; signals: ``(T,)``; output: ``spatial``.

    Raises:
        ValueError: the numbers of tissues differ.
    """
    if fractions.shape[0] != signals.shape[0] or signals.ndim != 1:
        raise ValueError(f"fractions (T, ...) and signals (T,) must list the same tissues, got shapes "
                         f"{tuple(fractions.shape)} and {tuple(signals.shape)}")
    return torch.tensordot(signals.to(fractions.dtype), fractions, dims=1)


def rician_noise(signal: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Magnitude of ``signal`` plus complex white Gaussian noise of standard deviation ``sigma`` per channel.

    Args:
        signal: noise-free magnitude signal (any shape, floating point).
        sigma: noise standard deviation of the real and of the imaginary channel (>= 0).
        generator: torch generator for reproducible noise.

    Returns:
        ``sqrt((signal + sigma n1)^2 + (sigma n2)^2)`` with ``n1, n2`` independent standard normal.

    Raises:
        ValueError: negative ``sigma``.
    """
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    real = torch.randn(signal.shape, generator=generator, dtype=signal.dtype)
    imag = torch.randn(signal.shape, generator=generator, dtype=signal.dtype)
    return torch.hypot(signal + sigma * real, sigma * imag)


def receive_bias(coords: torch.Tensor, *, radial: float = 0.0, gradient: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 wave: float = 0.0, wave_vector: tuple[float, float, float] = (0.0, 0.0, 1.0),
                 phase: float = 0.0) -> torch.Tensor:
    """Smooth multiplicative receive-bias field ``exp(f(u))`` at normalised coordinates ``u``.

    ``f(u) = radial (|u|^2 - 1/2) + gradient . u + wave sin(pi wave_vector . u + phase)``. ``u`` is the
    position relative to the object's centre divided by its radius (|u| ~ 1 at the edge of the brain), so
    the parameters are log-intensity changes across the object: ``radial > 0`` brightens the periphery as
    a receive array does, ``gradient`` tilts the field along a direction, ``wave`` adds a low-frequency
    standing-wave pattern whose ``phase`` may change from scan to scan.

    Shape:
        coords: ``(..., 3)``; output: ``(...)``.

    Returns:
        A positive field, 1 everywhere when all amplitudes are 0.
    """
    u = coords
    g = torch.as_tensor(gradient, dtype=u.dtype)
    k = torch.as_tensor(wave_vector, dtype=u.dtype)
    f = radial * ((u * u).sum(-1) - 0.5) + u @ g + wave * torch.sin(math.pi * (u @ k) + phase)
    return torch.exp(f)
