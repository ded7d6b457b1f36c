"""Deviation curves (paper Figs. 8 and 9): a score against a condition deviated both ways from its true value,
and when such a curve counts as flat.

A network that reads its condition scores best at the true value and worse when the condition is pushed
either way. A curve is **flat towards an end** when the end's score is not below the true point's by more
than the measurement noise. The noise is that of the drop itself, measured on the same images: per image
``i`` (and per training seed, where there are several) ``d_i = score_i(true) - score_i(end)``; the drop is
``mean(d)`` and its noise ``FLAT_NOISE_SE`` standard errors of that mean, ``sd(d) / sqrt(n)``. Pairing the
differences per image removes what differs between images (some are easier), which is most of the spread
of the scores themselves. With one image, or identical differences, there is no spread to measure and the
noise is zero: any drop above zero counts.
"""
import math

import numpy as np

# a drop smaller than this many standard errors of its paired per-image differences is within the noise
# (about the two-sided 95 % bound of a mean)
FLAT_NOISE_SE = 2.0


def end_drops(per_image, xs, true_x=1.0):
    """How far the score falls from the true value ``true_x`` to each end of ``xs``.

    Args:
        per_image (array-like): ``n×len(xs)`` scores, one row per image (images of several seeds are rows too).
        xs (sequence): the deviation values, sorted; ``true_x`` among them.
        true_x (float): the undeviated value.

    Returns:
        list of two dicts (low end, high end): ``x``, ``drop`` (mean of true - end, dB), ``noise``
        (``FLAT_NOISE_SE`` standard errors of that mean), ``flat`` (``drop <= noise``).
    """
    values = np.asarray(per_image, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(xs) or values.shape[0] < 1:
        raise ValueError(f'end_drops: expected an n×{len(xs)} array of per-image scores, got shape {values.shape}')
    xs = [float(x) for x in xs]
    if float(true_x) not in xs:
        raise ValueError(f'end_drops: the true value {true_x} is not among the deviations {xs}')
    t = xs.index(float(true_x))
    out = []
    for end in (0, len(xs) - 1):
        d = values[:, t] - values[:, end]
        n = len(d)
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        drop, noise = float(d.mean()), FLAT_NOISE_SE * se
        out.append({'x': xs[end], 'drop': drop, 'noise': noise, 'flat': bool(drop <= noise)})
    return out


def flat_curve_defects(label, per_image, xs, true_x=1.0, name='x'):
    """``DEFECT`` lines for each end of the curve ``label`` that is flat (see the module doc); none when the
    true value beats both ends beyond the noise."""
    lines = []
    for end in end_drops(per_image, xs, true_x):
        if end['flat']:
            lines.append(f'DEFECT: {label} is flat towards {name} = {end["x"]:g}: the true value ({name} = '
                         f'{true_x:g}) beats it by {end["drop"]:+.3f} dB, within the measurement noise '
                         f'({FLAT_NOISE_SE:g} standard errors of the paired per-image drop: {end["noise"]:.3f} dB); '
                         'the network does not read this condition.')
    return lines


def describe_ends(per_image, xs, true_x=1.0, name='x'):
    """One line: the drop towards each end and its noise."""
    parts = [f'{name} = {e["x"]:g}: {e["drop"]:+.2f} dB (noise {e["noise"]:.2f})' for e in end_drops(per_image, xs, true_x)]
    return f'true {name} = {true_x:g} beats ' + ', '.join(parts)
