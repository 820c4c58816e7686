"""Synthetic CelebA: cartoon head-and-shoulders figures in cluttered scenes.

`python -m tfattr.data.synthetic --out DIR --identities N --images-per-identity M --seed S
[--multi-face-rate 0.05] [--backgrounds K] [--workers W]` writes exactly the CelebA layout
(see tfattr/data/celeba.py): the six list files, `img_celeba/` (in-the-wild JPEGs,
160-480 px a side, face box 12-60 % of the shorter side, anywhere, rotated up to
20 deg, relit, sometimes blurred, ~5 % with 2-3 faces, distractor "faces" that are
not human), `img_align_celeba/` (178x218, eyes at y=112, x=69/109, rendered from
the same face parameters), plus `list_bbox_all_faces.txt` (every face, dominant =
largest first) and `backgrounds/` (face-free scenes of the same clutter).

Face box convention (as CelebA): an upright box from the forehead (above the
hairline) to the chin and from ear to ear, centred on the (rotated) face; its
size does not grow with the in-plane rotation.

Labels: a latent Gaussian copula over the 40 attributes whose correlation
matrix comes from CelebA's strongest pairwise correlations (phi), thresholded
at CelebA's positive rates (both from 20,000 real label rows, see
../shared/paper/celeba_attribute_*.csv, copied into `CELEBA_PRIORS` and
`CELEBA_CORRELATIONS`). Each latent is a mix of an identity part and an image
part (`IDENTITY_WEIGHT`): sex, age, skin, face shape, nose, lips, eyebrows,
hairline are fixed per identity; hair colour/style mostly; expression,
accessories, makeup, blur vary per image. Consistency rules: beard attributes,
necktie and baldness only for men; lipstick, heavy makeup and earrings only for
women (thresholds re-calibrated so the rates stay CelebA's); one hair colour at
most; straight xor wavy; No_Beard = no beard of any kind; a hat hides
baldness/receding hairline; oval xor chubby.

Rendered (visible, drawn from the label), `RENDERED_ATTRIBUTES`:
  hair: Black_Hair, Blond_Hair, Brown_Hair, Gray_Hair (else auburn), Bangs, Bald,
    Receding_Hairline, Straight_Hair, Wavy_Hair (neither: cropped hair / bun);
  face: Male (shoulder width, neck, square jaw, hair length), Young (not young:
    wrinkles, greyer skin), Chubby (wide round face), Oval_Face (long narrow face),
    Double_Chin (a lighter second chin under the jaw, a dark crease), Pale_Skin,
    Rosy_Cheeks, High_Cheekbones (cheek highlights), Big_Nose, Pointy_Nose (a dark
    pointed tip down to the upper lip), Big_Lips, Bushy_Eyebrows, Arched_Eyebrows,
    Narrow_Eyes, Bags_Under_Eyes;
  expression: Smiling (upturned mouth, teeth), Mouth_Slightly_Open (dark opening);
  beard: 5_o_Clock_Shadow (grey lower face), Goatee, Mustache, Sideburns, No_Beard
    (false also for a full beard);
  accessories: Eyeglasses (some sunglasses), Wearing_Hat, Wearing_Earrings,
    Wearing_Necklace, Wearing_Necktie, Wearing_Lipstick, Heavy_Makeup
    (eyeshadow + eyeliner);
  image: Blurry (Gaussian blur, sigma ~0.2 x inter-ocular distance).
Not rendered (label from the copula only): Attractive.
Fine textures (Straight_Hair vs Wavy_Hair strands, Narrow_Eyes) are the weakest
cues at low resolution; tests/data/test_synthetic.py measures which attributes a
linear model reads from 32x40 aligned crops. (Until 2026-11-28 Pointy_Nose was a
small faint triangle and Double_Chin a thin arc, which the tiny ANet could not
read at 64 px; both were drawn bolder, docs/training.md.)

Deterministic for a seed (byte-identical files, any number of workers):
everything an image needs comes from `np.random.default_rng([seed, tag, index])`.
Identities are split 8:1:1 into train/val/test (CelebA splits by identity);
files are numbered train first, then val, then test, as in CelebA.
"""

import argparse
import dataclasses
import math
import multiprocessing
import os
import sys
import time
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from tfattr.attributes import ATTRIBUTE_INDEX, ATTRIBUTE_NAMES, NUM_ATTRIBUTES

# --------------------------------------------------------------------------- CelebA statistics

# Positive rates on 20,000 real CelebA rows (../shared/paper/celeba_attribute_priors.csv).
CELEBA_PRIORS = {
    "5_o_Clock_Shadow": 0.1123, "Arched_Eyebrows": 0.2642, "Attractive": 0.5131,
    "Bags_Under_Eyes": 0.2046, "Bald": 0.0232, "Bangs": 0.1515, "Big_Lips": 0.2386,
    "Big_Nose": 0.2374, "Black_Hair": 0.2427, "Blond_Hair": 0.1489, "Blurry": 0.0517,
    "Brown_Hair": 0.2032, "Bushy_Eyebrows": 0.1441, "Chubby": 0.0571, "Double_Chin": 0.0464,
    "Eyeglasses": 0.0646, "Goatee": 0.0625, "Gray_Hair": 0.0419, "Heavy_Makeup": 0.3849,
    "High_Cheekbones": 0.4500, "Male": 0.4215, "Mouth_Slightly_Open": 0.4791,
    "Mustache": 0.0394, "Narrow_Eyes": 0.1158, "No_Beard": 0.8321, "Oval_Face": 0.2788,
    "Pale_Skin": 0.0432, "Pointy_Nose": 0.2762, "Receding_Hairline": 0.0780,
    "Rosy_Cheeks": 0.0634, "Sideburns": 0.0584, "Smiling": 0.4793, "Straight_Hair": 0.2124,
    "Wavy_Hair": 0.3161, "Wearing_Earrings": 0.1863, "Wearing_Hat": 0.0498,
    "Wearing_Lipstick": 0.4711, "Wearing_Necklace": 0.1220, "Wearing_Necktie": 0.0741,
    "Young": 0.7799,
}

# The 40 strongest pairwise correlations (phi) (../shared/paper/celeba_attribute_correlations.csv).
CELEBA_CORRELATIONS = (
    ("Heavy_Makeup", "Wearing_Lipstick", 0.805), ("Male", "Wearing_Lipstick", -0.795),
    ("High_Cheekbones", "Smiling", 0.675), ("Heavy_Makeup", "Male", -0.670),
    ("Goatee", "No_Beard", -0.564), ("No_Beard", "Sideburns", -0.549),
    ("Chubby", "Double_Chin", 0.546), ("Mouth_Slightly_Open", "Smiling", 0.534),
    ("5_o_Clock_Shadow", "No_Beard", -0.527), ("Male", "No_Beard", -0.523),
    ("Goatee", "Sideburns", 0.501), ("Attractive", "Wearing_Lipstick", 0.485),
    ("Attractive", "Heavy_Makeup", 0.479), ("Arched_Eyebrows", "Wearing_Lipstick", 0.460),
    ("Arched_Eyebrows", "Heavy_Makeup", 0.438), ("Mustache", "No_Beard", -0.436),
    ("Goatee", "Mustache", 0.435), ("No_Beard", "Wearing_Lipstick", 0.422),
    ("5_o_Clock_Shadow", "Male", 0.416), ("Arched_Eyebrows", "Male", -0.411),
    ("High_Cheekbones", "Mouth_Slightly_Open", 0.407), ("Attractive", "Male", -0.404),
    ("Attractive", "Young", 0.394), ("Male", "Wearing_Earrings", -0.376),
    ("Big_Nose", "Male", 0.375), ("Gray_Hair", "Young", -0.374),
    ("Wearing_Earrings", "Wearing_Lipstick", 0.372), ("Bags_Under_Eyes", "Big_Nose", 0.364),
    ("Heavy_Makeup", "Wearing_Earrings", 0.361), ("Wavy_Hair", "Wearing_Lipstick", 0.359),
    ("Heavy_Makeup", "No_Beard", 0.353), ("5_o_Clock_Shadow", "Wearing_Lipstick", -0.336),
    ("Male", "Wearing_Necktie", 0.330), ("Male", "Wavy_Hair", -0.325),
    ("Heavy_Makeup", "Wavy_Hair", 0.324), ("Straight_Hair", "Wavy_Hair", -0.323),
    ("Mustache", "Sideburns", 0.321), ("Double_Chin", "Young", -0.313),
    ("Big_Nose", "Chubby", 0.310), ("Big_Nose", "Wearing_Lipstick", -0.309),
)

RENDERED_ATTRIBUTES = tuple(n for n in ATTRIBUTE_NAMES if n != "Attractive")
NOT_RENDERED_ATTRIBUTES = ("Attractive",)

# Share of each latent fixed per identity (1 = identity trait, 0 = per image).
IDENTITY_WEIGHT = {n: 0.6 for n in ATTRIBUTE_NAMES}
IDENTITY_WEIGHT.update({
    "Male": 1.0, "Young": 1.0, "Pale_Skin": 1.0, "Chubby": 1.0, "Oval_Face": 1.0,
    "Big_Nose": 1.0, "Pointy_Nose": 1.0, "Big_Lips": 1.0, "Bushy_Eyebrows": 1.0,
    "Bald": 1.0, "Receding_Hairline": 1.0, "Double_Chin": 0.9, "Attractive": 0.8,
    "Black_Hair": 0.92, "Blond_Hair": 0.92, "Brown_Hair": 0.92, "Gray_Hair": 0.95,
    "Straight_Hair": 0.85, "Wavy_Hair": 0.85, "Bangs": 0.7, "Arched_Eyebrows": 0.8,
    "Narrow_Eyes": 0.5, "Bags_Under_Eyes": 0.7, "High_Cheekbones": 0.3,
    "Smiling": 0.15, "Mouth_Slightly_Open": 0.1, "Blurry": 0.0, "Wearing_Hat": 0.2,
    "Eyeglasses": 0.5, "Wearing_Necklace": 0.3, "Wearing_Necktie": 0.3,
    "Wearing_Earrings": 0.4, "Heavy_Makeup": 0.5, "Wearing_Lipstick": 0.5,
    "Rosy_Cheeks": 0.5, "5_o_Clock_Shadow": 0.6, "Goatee": 0.85, "Mustache": 0.85,
    "Sideburns": 0.85, "No_Beard": 0.85,
})
MALE_ONLY = ("5_o_Clock_Shadow", "Goatee", "Mustache", "Sideburns", "Wearing_Necktie", "Bald")
FEMALE_ONLY = ("Wearing_Lipstick", "Heavy_Makeup", "Wearing_Earrings")
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
FULL_BEARD_RATE = 0.03  # a beard that is none of goatee/mustache/sideburns/stubble (No_Beard = 0)

ALIGNED_SIZE = (178, 218)  # width, height (CelebA img_align_celeba)
ALIGNED_EYE_Y = 112.0
ALIGNED_IOD = 40.0  # inter-ocular distance in the aligned crop
# Face box in face coordinates (unit = inter-ocular distance, origin = between the eyes).
BOX_TOP, BOX_EAR_MARGIN, BOX_CHIN_MARGIN = -1.45, 0.14, 0.05
JPEG_QUALITY = 90


@lru_cache(maxsize=1)
def _copula():
    """(cholesky [40, 40], thresholds [40], full-beard threshold), calibrated.

    The latent correlation of each listed pair is sin(pi/2 * phi) (the latent
    correlation of two median splits with that phi), projected to the nearest
    positive definite matrix. The thresholds are then calibrated by Monte
    Carlo (fixed seed) THROUGH the consistency rules of `_apply_rules`, so the
    positive rates after gating and exclusivity are CelebA's.
    """
    from statistics import NormalDist

    nd = NormalDist()
    idx = ATTRIBUTE_INDEX
    corr = np.eye(NUM_ATTRIBUTES)
    for a, b, phi in CELEBA_CORRELATIONS:
        r = math.sin(math.pi / 2 * phi)
        corr[idx[a], idx[b]] = corr[idx[b], idx[a]] = r
    w, v = np.linalg.eigh(corr)
    corr = (v * np.maximum(w, 1e-3)) @ v.T
    d = np.sqrt(np.diag(corr))
    corr = corr / d[:, None] / d[None, :]
    chol = np.linalg.cholesky(corr)
    ppf = np.vectorize(lambda q: nd.inv_cdf(min(max(q, 1e-4), 1 - 1e-4)))
    priors = np.array([CELEBA_PRIORS[n] for n in ATTRIBUTE_NAMES])
    thresholds = ppf(1.0 - priors)
    full_thr = nd.inv_cdf(FULL_BEARD_RATE)
    # Monte Carlo latents mixed exactly as `sample_labels` mixes them (identity + image parts).
    weight = np.array([IDENTITY_WEIGHT[n] for n in ATTRIBUTE_NAMES])
    mc = np.random.default_rng(20151207)
    z = (np.sqrt(weight) * (mc.standard_normal((40_000, NUM_ATTRIBUTES)) @ chol.T)
         + np.sqrt(1.0 - weight) * (mc.standard_normal((40_000, NUM_ATTRIBUTES)) @ chol.T))
    z = np.asfortranarray(z)
    nb = idx["No_Beard"]
    # Secant iterations on the probit scale; No_Beard's rate is set by the full-beard threshold.
    target = ppf(1.0 - priors)
    x = np.append(thresholds, full_thr)
    prev_x = prev_f = None
    for _ in range(15):
        lab, _ = _apply_rules(z, x[:-1], x[-1])
        rate = lab.mean(axis=0)
        f = ppf(1.0 - rate) - target  # 0 when calibrated; increasing in each threshold
        # No_Beard's own threshold is unused; its rate falls as the full-beard threshold rises.
        f_all = np.append(np.where(np.arange(NUM_ATTRIBUTES) == nb, 0.0, f), f[nb])
        slope = np.ones_like(x)
        if prev_x is not None:
            dx, df = x - prev_x, f_all - prev_f
            ok = np.abs(dx) > 1e-6
            slope[ok] = np.clip(df[ok] / dx[ok], 0.2, 5.0)
        prev_x, prev_f = x.copy(), f_all
        x = x - f_all / slope
    return chol, x[:-1], float(x[-1])


def _apply_rules(z, thr, full_thr):
    """Latents [N, 40] -> (labels bool [N, 40], full beard bool [N]) with the consistency rules."""
    idx = ATTRIBUTE_INDEX
    lab = z > thr
    margin = z - thr
    male = lab[:, idx["Male"]]
    for n in MALE_ONLY:
        lab[:, idx[n]] &= male
    for n in FEMALE_ONLY:
        lab[:, idx[n]] &= ~male
    hc = [idx[n] for n in HAIR_COLOURS]
    m = np.where(lab[:, hc], margin[:, hc], -np.inf)
    best = np.argmax(m, axis=1)
    any_hc = lab[:, hc].any(axis=1)
    lab[:, hc] = False
    lab[np.flatnonzero(any_hc), np.array(hc)[best[any_hc]]] = True
    for a, b in (("Straight_Hair", "Wavy_Hair"), ("Chubby", "Oval_Face")):
        a, b = idx[a], idx[b]
        both = lab[:, a] & lab[:, b]
        lab[both & (margin[:, a] >= margin[:, b]), b] = False
        lab[both & (margin[:, a] < margin[:, b]), a] = False
    hat = lab[:, idx["Wearing_Hat"]]
    bald = lab[:, idx["Bald"]] & ~hat
    lab[:, idx["Bald"]] = bald
    lab[:, idx["Receding_Hairline"]] &= ~bald & ~hat
    for n in ("Bangs", "Straight_Hair", "Wavy_Hair"):
        lab[:, idx[n]] &= ~bald
    lab[:, idx["Bangs"]] &= ~lab[:, idx["Receding_Hairline"]]
    full_beard = male & (z[:, idx["No_Beard"]] < full_thr)
    beards = [idx[n] for n in ("5_o_Clock_Shadow", "Goatee", "Mustache", "Sideburns")]
    lab[:, idx["No_Beard"]] = ~(full_beard | lab[:, beards].any(axis=1))
    return lab, full_beard


def sample_labels(rng_identity, rng_images, num_images):
    """Labels uint8 [num_images, 40] of one identity (+ full-beard flags [num_images]).

    `rng_identity` draws the identity part of the latents, `rng_images` the
    per-image parts; see the module docstring for the rules applied.
    """
    chol, thr, full_thr = _copula()
    weight = np.array([IDENTITY_WEIGHT[n] for n in ATTRIBUTE_NAMES])
    z_id = chol @ rng_identity.standard_normal(NUM_ATTRIBUTES)
    z_img = rng_images.standard_normal((num_images, NUM_ATTRIBUTES)) @ chol.T
    z = np.sqrt(weight) * z_id + np.sqrt(1.0 - weight) * z_img
    lab, full_beard = _apply_rules(z, thr, full_thr)
    return lab.astype(np.uint8), full_beard


# --------------------------------------------------------------------------- identity / face params

SKIN_LIGHT, SKIN_MID, SKIN_DARK = np.array([236, 198, 172.]), np.array([198, 146, 112.]), np.array([105, 68, 48.])
SKIN_PALE = np.array([252, 240, 234.])
HAIR_RGB = {
    "Black_Hair": ((22, 18, 18), (45, 35, 32)), "Blond_Hair": ((232, 200, 120), (245, 222, 160)),
    "Brown_Hair": ((105, 65, 35), (140, 90, 50)), "Gray_Hair": ((150, 150, 150), (205, 205, 205)),
    None: ((185, 70, 30), (215, 100, 45)),  # auburn/ginger: no hair-colour label
}


def _mix(a, b, t):
    return np.asarray(a, float) * (1 - t) + np.asarray(b, float) * t


def _col(c):
    if isinstance(c, tuple):
        return c
    return tuple(min(255.0, max(0.0, float(v))) for v in c)


def identity_traits(rng, labels0):
    """Fixed per-identity traits (continuous; labels0 = the identity's first label row)."""
    t = rng.uniform()
    skin = _mix(SKIN_LIGHT, SKIN_MID, t * 2) if t < 0.5 else _mix(SKIN_MID, SKIN_DARK, t * 2 - 1)
    skin = skin + rng.normal(0, 5, 3)
    male = bool(labels0[ATTRIBUTE_INDEX["Male"]])
    return {
        "skin": skin, "pale_skin": SKIN_PALE + rng.normal(0, 2, 3),
        "hair_t": rng.uniform(), "hair_jitter": rng.normal(0, 6, 3),
        "long_hair": bool(rng.uniform() < (0.1 if male else 0.88)),
        "width": rng.uniform(0.97, 1.06), "iris": _col([(70, 45, 25), (60, 100, 150), (40, 30, 25),
                                                          (80, 110, 70)][rng.integers(4)]),
        "lip": _mix(skin, (175, 85, 85), 0.45), "brow_t": rng.uniform(),
        "wave_phase": rng.uniform(0, 2 * np.pi), "mouth_w": rng.uniform(0.3, 0.36),
    }


def _hair_colour(lab, traits):
    name = next((n for n in HAIR_COLOURS if lab[ATTRIBUTE_INDEX[n]]), None)
    lo, hi = HAIR_RGB[name]
    return _mix(lo, hi, traits["hair_t"]) + traits["hair_jitter"], name


# --------------------------------------------------------------------------- drawing

class _Painter:
    """Draws in face coordinates (unit = inter-ocular distance, origin between the eyes,
    y down) mapped to pixels by scale s, rotation theta (degrees, counter-clockwise on
    screen) and translation (tx, ty)."""

    SHIFT = 4
    ONE = 16.0

    def __init__(self, img, scale, theta_deg, tx, ty):
        self.img, self.s, self.theta = img, float(scale), float(theta_deg)
        c, sn = math.cos(math.radians(theta_deg)), math.sin(math.radians(theta_deg))
        self.A = np.array([[c, sn], [-sn, c]]) * self.s  # row-vector form: p @ A
        self.t = np.array([tx, ty], float)
        self._f = (c * self.s, sn * self.s, float(tx), float(ty))  # python floats for single points

    def map(self, xy):
        return np.asarray(xy, float).reshape(-1, 2) @ self.A + self.t

    def _pts(self, xy):
        return np.round(self.map(xy) * self.ONE).astype(np.int32)

    def th(self, t):
        return max(1, int(round(t * self.s)))

    def poly(self, xy, color):
        cv2.fillPoly(self.img, [self._pts(xy)], _col(color), cv2.LINE_AA, self.SHIFT)

    def line(self, xy, color, t, closed=False):
        cv2.polylines(self.img, [self._pts(xy)], closed, _col(color), self.th(t), cv2.LINE_AA, self.SHIFT)

    def ellipse(self, cx, cy, ax, ay, color, t=None, angle=0.0, a0=0.0, a1=360.0):
        c, sn, tx, ty = self._f
        one = self.ONE
        px = (cx * c - cy * sn + tx) * one
        py = (cx * sn + cy * c + ty) * one
        s16 = self.s * one
        axes = (max(1, int(round(ax * s16))), max(1, int(round(ay * s16))))
        thick = -1 if t is None else self.th(t)
        cv2.ellipse(self.img, (int(round(px)), int(round(py))), axes, self.theta + angle, a0, a1,
                    _col(color), thick, cv2.LINE_AA, self.SHIFT)

    def replay(self, ops):
        """Draws a recorded figure (`_Recorder.ops`): all points are mapped in one product."""
        pts = [op[1] for op in ops if op[0] != "e"]
        if pts:
            sizes = np.cumsum([len(x) for x in pts])[:-1]
            mapped = np.split(self._pts(np.concatenate(pts)), sizes)
        k = 0
        for op in ops:
            if op[0] == "p":
                cv2.fillPoly(self.img, [mapped[k]], op[2], cv2.LINE_AA, self.SHIFT)
                k += 1
            elif op[0] == "l":
                cv2.polylines(self.img, [mapped[k]], op[4], op[2], self.th(op[3]), cv2.LINE_AA, self.SHIFT)
                k += 1
            else:
                self.ellipse(*op[1:])


class _Recorder:
    """Same drawing API as _Painter; records the operations in face coordinates."""

    def __init__(self):
        self.ops = []

    def poly(self, xy, color):
        self.ops.append(("p", np.asarray(xy, float).reshape(-1, 2), _col(color)))

    def line(self, xy, color, t, closed=False):
        self.ops.append(("l", np.asarray(xy, float).reshape(-1, 2), _col(color), t, closed))

    def ellipse(self, cx, cy, ax, ay, color, t=None, angle=0.0, a0=0.0, a1=360.0):
        self.ops.append(("e", float(cx), float(cy), ax, ay, _col(color), t, angle, a0, a1))


def record_figure(face):
    """The drawing operations of one figure (face coordinates), to replay at any pose."""
    rec = _Recorder()
    draw_figure(rec, face)
    return rec.ops


def _ellipse_pts(cx, cy, ax, ay, a0, a1, n=24):
    a = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + ax * np.cos(a), cy + ay * np.sin(a)], axis=1)


@dataclasses.dataclass
class Face:
    """Everything needed to draw one figure (per image)."""
    lab: np.ndarray
    traits: dict
    full_beard: bool
    yaw: float
    clothes: tuple
    hat_colour: tuple
    hat_style: int
    glasses_colour: tuple
    sunglasses: bool
    tie_colour: tuple
    jewel: tuple
    lipstick: tuple
    shadow: tuple
    hoops: bool

    def has(self, name):
        return bool(self.lab[ATTRIBUTE_INDEX[name]])

    @property
    def half_width(self):
        a = 1.05
        if self.has("Chubby"):
            a = 1.24
        elif self.has("Oval_Face"):
            a = 0.9
        return a * self.traits["width"]

    @property
    def half_height(self):
        return 1.42 if self.has("Chubby") else 1.62 if self.has("Oval_Face") else 1.5

    def box(self):
        """Canonical face box (x0, y0, x1, y1) in face coordinates."""
        a = self.half_width
        return (-(a + BOX_EAR_MARGIN), BOX_TOP, a + BOX_EAR_MARGIN, 0.25 + self.half_height + BOX_CHIN_MARGIN)

    def landmarks(self):
        """5 landmarks (x, y) in face coordinates, CelebA order (image-left eye first)."""
        mw = self.traits["mouth_w"] * (1.2 if self.has("Smiling") else 1.0)
        my = 0.98 - (0.13 if self.has("Smiling") else 0.0)
        return np.array([[-0.5 + 0.1 * self.yaw, 0.0], [0.5 + 0.1 * self.yaw, 0.0],
                         [0.25 * self.yaw, 0.55], [-mw + 0.25 * self.yaw, my], [mw + 0.25 * self.yaw, my]])


def sample_face(rng, lab, traits, full_beard):
    def rand_colour(sat=True):
        c = rng.uniform(0, 255, 3)
        if sat:
            c[rng.integers(3)] *= 0.25
        return _col(c)
    return Face(
        lab=lab, traits=traits, full_beard=bool(full_beard), yaw=float(rng.uniform(-0.35, 0.35)),
        clothes=rand_colour(rng.uniform() < 0.6), hat_colour=rand_colour(), hat_style=int(rng.integers(2)),
        glasses_colour=_col([(20, 20, 20), (90, 50, 20), (150, 150, 160), (120, 20, 30)][rng.integers(4)]),
        sunglasses=bool(rng.uniform() < 0.2), tie_colour=rand_colour(),
        jewel=_col([(245, 205, 40), (235, 235, 245), (250, 250, 250)][rng.integers(3)]),
        lipstick=_col([(205, 20, 45), (220, 40, 110), (160, 10, 40)][rng.integers(3)]),
        shadow=_col([(90, 60, 160), (40, 90, 170), (120, 50, 110), (60, 40, 40)][rng.integers(4)]),
        hoops=bool(rng.uniform() < 0.5))


def draw_figure(p, f):
    """Draws one head-and-shoulders figure with painter p (face coordinates)."""
    has = f.has
    tr = f.traits
    male = has("Male")
    a, b = f.half_width, f.half_height
    skin = tr["pale_skin"] if has("Pale_Skin") else tr["skin"]
    if not has("Young"):
        skin = _mix(skin, (160, 150, 145), 0.22)
    hair, hair_name = _hair_colour(f.lab, tr)
    dark_hair = _mix(hair, (0, 0, 0), 0.35)
    shade = _mix(skin, (40, 20, 20), 0.25)
    bald, hat = has("Bald"), has("Wearing_Hat")
    wavy, straight = has("Wavy_Hair"), has("Straight_Hair")
    long_hair = tr["long_hair"] and not bald
    bun = long_hair and not wavy and not straight
    if bun:
        long_hair = False
    ph = tr["wave_phase"]
    yaw = f.yaw
    ca, ccy, cb = a + 0.13, -0.35, 1.2

    # torso and shoulders
    sw = 2.55 if male else 1.95
    p.ellipse(0, 3.1, sw, 1.2, f.clothes)
    p.poly([[-sw, 3.1], [sw, 3.1], [sw + 0.4, 6.0], [-sw - 0.4, 6.0]], f.clothes)
    # long hair behind the head, over the shoulders
    if long_hair:
        ys = np.linspace(-0.4, 2.5, 14)
        amp = 0.13 if wavy else 0.0
        xo = a + 0.42 + 0.05 * ys + amp * np.sin(ys * 5.5 + ph)
        left = np.stack([-xo, ys], 1)
        right = np.stack([xo[::-1], ys[::-1]], 1)
        p.poly(np.concatenate([left, right]), hair)
        for k in (-1, 1):
            for dx in (0.12, 0.28):
                xs = k * (a + dx + 0.05 * ys + amp * np.sin(ys * 5.5 + ph + dx * 3))
                p.line(np.stack([xs, ys], 1), dark_hair, 0.05)
    # neck
    nw = 0.52 if male else 0.4
    p.poly([[-nw, 0.9], [nw, 0.9], [nw * 1.1, 2.15], [-nw * 1.1, 2.15]], _mix(skin, (0, 0, 0), 0.12))
    if has("Wearing_Necktie"):
        p.poly([[-0.55, 1.95], [0.0, 2.35], [0.55, 1.95], [0.7, 2.3], [0.0, 2.75], [-0.7, 2.3]],
               (245, 245, 245))
        p.poly([[-0.13, 2.15], [0.13, 2.15], [0.1, 2.4], [-0.1, 2.4]], f.tie_colour)
        p.poly([[-0.1, 2.38], [0.1, 2.38], [0.24, 3.9], [0.0, 4.15], [-0.24, 3.9]], f.tie_colour)
    if has("Wearing_Necklace"):
        p.ellipse(0, 1.75, nw + 0.1, 0.45, f.jewel, t=0.05, a0=10, a1=170)
        for ang in np.linspace(25, 155, 8):
            r = np.radians(ang)
            p.ellipse((nw + 0.1) * np.cos(r), 1.75 + 0.45 * np.sin(r), 0.07, 0.07, f.jewel)
    # hair cap / scalp
    if bun:
        p.ellipse(0, -1.45, 0.5, 0.38, hair)
    if bald:
        p.ellipse(0, ccy, a, cb * 0.98, skin)
    elif not hat:
        ang = np.linspace(180, 360, 33)
        rad = np.ones_like(ang)
        if wavy:
            rad = rad + 0.06 * np.sin(np.radians(ang) * 12 + ph)
        cap_b = cb if (straight or wavy or long_hair or bun) else cb * 0.93
        pts = np.stack([ca * rad * np.cos(np.radians(ang)), ccy + cap_b * rad * np.sin(np.radians(ang))], 1)
        p.poly(np.concatenate([pts, [[ca, 0.35], [-ca, 0.35]]]), hair)
    # ears
    for k in (-1, 1):
        p.ellipse(k * (a - 0.02), 0.2, 0.17, 0.3, shade)
    # face (and square jaw for men)
    if has("Double_Chin"):  # a fleshy second chin below the jaw (lighter than the neck)
        p.ellipse(0, 1.8, 0.66, 0.34, _mix(skin, (255, 255, 255), 0.12))
    p.ellipse(0, 0.25, a, b, skin)
    if male:
        p.poly([[-a * 0.97, 0.3], [-a * 0.82, 1.35], [-0.42, 1.72], [0.42, 1.72], [a * 0.82, 1.35],
                [a * 0.97, 0.3]], skin)
    if bald:
        p.ellipse(-0.3, -0.95, 0.35, 0.15, _mix(skin, (255, 255, 255), 0.35), angle=-15)
    if has("Double_Chin"):
        p.ellipse(0, 1.62, 0.5, 0.26, _mix(skin, (0, 0, 0), 0.6), t=0.12, a0=20, a1=160)
    # stubble / beard on the lower face
    lower = _ellipse_pts(0, 0.25, a, b, -5, 185, 30)
    lower = lower[lower[:, 1] > 0.55]
    if f.full_beard:
        beard = _ellipse_pts(0, 0.3, a + 0.04, b + 0.12, -8, 188, 30)
        p.poly(beard[beard[:, 1] > 0.6], dark_hair)
    elif has("5_o_Clock_Shadow"):
        p.poly(lower, _mix(skin, (55, 60, 75), 0.45))
    if has("Sideburns"):
        for k in (-1, 1):
            p.poly([[k * a * 0.99, -0.45], [k * (a - 0.26), -0.45], [k * (a - 0.22), 0.75],
                    [k * (a - 0.02), 0.8]], dark_hair)
    if has("Goatee"):
        p.ellipse(0.25 * yaw, 1.42, 0.26, 0.34, dark_hair)
    # wrinkles (not young)
    if not has("Young"):
        wr = _mix(skin, (0, 0, 0), 0.45)
        for y in (-0.62, -0.78, -0.94):
            p.ellipse(0, y + 0.5, 0.5, 0.5, wr, t=0.045, a0=240, a1=300)
        for k in (-1, 1):
            p.line([[k * 0.28 + 0.2 * yaw, 0.5], [k * 0.5 + 0.2 * yaw, 1.1]], wr, 0.05)
    # cheeks
    if has("High_Cheekbones"):
        for k in (-1, 1):
            p.ellipse(k * 0.62, 0.32, 0.3, 0.09, _mix(skin, (255, 255, 255), 0.45), angle=-k * 20)
            p.ellipse(k * 0.62, 0.5, 0.3, 0.07, _mix(skin, (0, 0, 0), 0.25), angle=-k * 20)
    if has("Rosy_Cheeks"):
        for k in (-1, 1):
            p.ellipse(k * 0.62 + 0.1 * yaw, 0.6, 0.24, 0.2, _mix(skin, (235, 45, 70), 0.6))
    # eyes
    ex = 0.1 * yaw
    narrow = has("Narrow_Eyes")
    eh = 0.035 if narrow else 0.1
    for k in (-1, 1):
        cx = k * 0.5 + ex
        if has("Heavy_Makeup"):
            p.ellipse(cx, -0.08, 0.3, 0.17, f.shadow)
        if has("Bags_Under_Eyes"):
            p.ellipse(cx, 0.1, 0.24, 0.13, _mix(skin, (70, 40, 70), 0.4), a0=0, a1=180)
            p.ellipse(cx, 0.1, 0.24, 0.13, _mix(skin, (50, 20, 40), 0.6), t=0.04, a0=10, a1=170)
        p.ellipse(cx, 0, 0.21, eh, (245, 245, 240))
        p.ellipse(cx + 0.02 * yaw, 0, 0.09, min(0.09, eh), tr["iris"])
        p.ellipse(cx + 0.02 * yaw, 0, 0.04, min(0.04, eh), (10, 10, 10))
        p.ellipse(cx, 0, 0.21, eh, (25, 15, 15), t=0.06 if has("Heavy_Makeup") else 0.025)
    # eyebrows
    brow = _mix(dark_hair, (60, 40, 30), 0.5) if hair_name in ("Blond_Hair", "Gray_Hair") else dark_hair
    bt = 0.15 if has("Bushy_Eyebrows") else 0.055
    for k in (-1, 1):
        xs = np.linspace(0.2, 0.82, 7)
        if has("Arched_Eyebrows"):
            ys = -0.36 - 0.17 * np.clip(1 - np.abs(xs - 0.55) / 0.3, 0, 1)
        else:
            ys = -0.38 + 0.02 * (xs - 0.2)
        p.line(np.stack([k * xs + ex, ys], 1), brow, bt)
    # nose
    nx = 0.25 * yaw
    if has("Big_Nose"):
        p.ellipse(nx, 0.43, 0.27, 0.22, _mix(skin, (0, 0, 0), 0.2))
        p.line([[nx - 0.1, 0.05], [nx - 0.16, 0.3]], shade, 0.05)
        for k in (-1, 1):
            p.ellipse(nx + k * 0.13, 0.52, 0.08, 0.05, (40, 25, 25))
    else:
        p.line([[nx - 0.05, 0.1], [nx - 0.1, 0.45]], shade, 0.04)
        for k in (-1, 1):
            p.ellipse(nx + k * 0.09, 0.52, 0.045, 0.03, _mix(skin, (0, 0, 0), 0.5))
    if has("Pointy_Nose"):
        p.poly([[nx - 0.15, 0.3], [nx + 0.15, 0.3], [nx, 0.76]], _mix(skin, (0, 0, 0), 0.55))
    else:
        p.ellipse(nx, 0.5, 0.1, 0.07, _mix(skin, (0, 0, 0), 0.3), t=0.03, a0=20, a1=160)
    # mustache
    if has("Mustache"):
        p.poly([[nx - 0.42, 0.95], [nx - 0.3, 0.74], [nx, 0.7], [nx + 0.3, 0.74], [nx + 0.42, 0.95],
                [nx + 0.25, 0.86], [nx, 0.84], [nx - 0.25, 0.86]], dark_hair)
    # mouth
    smile, open_ = has("Smiling"), has("Mouth_Slightly_Open")
    w = tr["mouth_w"] * (1.2 if smile else 1.0)
    lipt = 0.14 if has("Big_Lips") else 0.055
    lip = f.lipstick if has("Wearing_Lipstick") else tr["lip"]
    xs = np.linspace(-1, 1, 13)
    mx = nx + w * xs
    centre = 0.98 - (0.15 * xs ** 2 if smile else -0.02 * xs ** 2)
    gap = (0.16 if smile else 0.11) * (1 - xs ** 2) if open_ else np.zeros_like(xs)
    upper = centre - (0.03 if smile and not open_ else 0.0) * (1 - xs ** 2)
    lower = centre + gap + (0.08 * (1 - xs ** 2) if smile else 0.0)
    p.poly(np.concatenate([np.stack([mx, upper - lipt * (1 - 0.6 * xs ** 2)], 1),
                           np.stack([mx[::-1], lower[::-1] + lipt * 1.3 * (1 - 0.6 * xs[::-1] ** 2)], 1)]), lip)
    if smile or open_:
        p.poly(np.concatenate([np.stack([mx, upper], 1), np.stack([mx[::-1], lower[::-1]], 1)]), (45, 10, 15))
        if smile:
            teeth = upper + (lower - upper) * (0.55 if open_ else 0.8)
            p.poly(np.concatenate([np.stack([mx[1:-1], upper[1:-1]], 1),
                                   np.stack([mx[-2:0:-1], teeth[-2:0:-1]], 1)]), (250, 250, 245))
    else:
        p.line(np.stack([mx, centre], 1), (60, 20, 25), 0.03)
    # front hair: hairline, receding hairline, bangs
    if not bald and not hat:
        xs = np.linspace(-(a - 0.02), a - 0.02, 25)
        u = xs / a
        if has("Bangs"):
            hl = -0.5 + 0.05 * np.abs(np.sin(xs * 14)) + 0.15 * u ** 4
            if wavy:
                hl = hl + 0.06 * np.sin(xs * 9 + ph)
        elif has("Receding_Hairline"):
            hl = -1.1 - 0.3 * np.exp(-((np.abs(xs) - 0.55) / 0.17) ** 2) + 0.7 * u ** 6
        else:
            hl = -0.92 + 0.5 * u ** 4
        top = np.stack([ca * np.cos(np.radians(np.linspace(180, 360, 25))),
                        ccy + cb * np.sin(np.radians(np.linspace(180, 360, 25)))], 1)
        top = top[top[:, 1] < -0.3]
        front = np.concatenate([top, [[ca, -0.1], [a - 0.02, -0.1]], np.stack([xs[::-1], hl[::-1]], 1),
                                [[-(a - 0.02), -0.1], [-ca, -0.1]]])
        p.poly(front, hair)
        if straight:
            for x0 in np.linspace(-0.7, 0.7, 6):
                p.line([[x0 * 0.6, -1.45], [x0 * a, -0.95 if not has("Bangs") else -0.55]], dark_hair, 0.04)
        elif wavy:
            for x0 in np.linspace(-0.7, 0.7, 5):
                yy = np.linspace(-1.45, -0.95 if not has("Bangs") else -0.55, 8)
                p.line(np.stack([x0 * a + 0.07 * np.sin(yy * 14 + ph), yy], 1), dark_hair, 0.045)
    elif bald:
        for k in (-1, 1):  # side tufts keep the hair colour visible
            p.poly([[k * (a + 0.06), -0.55], [k * (a - 0.12), -0.5], [k * (a - 0.1), 0.05],
                    [k * (a + 0.05), 0.1]], hair)
    if hat:
        for k in (-1, 1):  # hair visible under the hat
            p.poly([[k * (a + 0.1), -0.9], [k * (a - 0.15), -0.9], [k * (a - 0.12), -0.2],
                    [k * (a + 0.08), -0.15]], hair)
        if f.hat_style == 0:  # brimmed hat
            p.ellipse(0, -1.0, ca + 0.1, 0.95, f.hat_colour, a0=180, a1=360)
            p.ellipse(0, -1.0, ca + 0.6, 0.2, _mix(f.hat_colour, (0, 0, 0), 0.3))
        else:  # beanie
            p.ellipse(0, -0.85, ca + 0.05, 1.0, f.hat_colour, a0=180, a1=360)
            p.poly([[-ca - 0.05, -0.85], [ca + 0.05, -0.85], [ca + 0.05, -0.62], [-ca - 0.05, -0.62]],
                   _mix(f.hat_colour, (255, 255, 255), 0.3))
    # earrings
    if has("Wearing_Earrings"):
        for k in (-1, 1):
            if f.hoops:
                p.ellipse(k * (a + 0.01), 0.63, 0.13, 0.15, f.jewel, t=0.05)
            else:
                p.ellipse(k * (a + 0.01), 0.55, 0.1, 0.1, f.jewel)
                p.ellipse(k * (a + 0.01), 0.55, 0.1, 0.1, (60, 50, 20), t=0.02)
    # glasses
    if has("Eyeglasses"):
        gc = f.glasses_colour
        for k in (-1, 1):
            cx = k * 0.5 + ex
            if f.sunglasses:
                p.ellipse(cx, 0.0, 0.27, 0.22, (25, 25, 30))
            p.ellipse(cx, 0.0, 0.27, 0.22, gc, t=0.065)
            p.line([[k * 0.77 + ex, -0.05], [k * (a + 0.02), -0.1]], gc, 0.06)
        p.line([[-0.23 + ex, -0.04], [0.23 + ex, -0.04]], gc, 0.06)


# --------------------------------------------------------------------------- scenes

@lru_cache(maxsize=4)
def _noise_tile(seed):
    rng = np.random.default_rng([seed, 99])
    return rng.integers(0, 10, (512, 512, 3), dtype=np.uint8)


def draw_clutter(rng, height, width):
    """A cluttered face-free scene: gradient, texture, shapes, stripes, strokes."""
    u = rng.uniform(size=8)  # the scene's coin flips, drawn at once (speed)
    k = 2 + int(u[0] * 2)
    img = cv2.resize(rng.integers(0, 256, (k, k, 3), dtype=np.uint8), (width, height),
                     interpolation=cv2.INTER_LINEAR)
    if u[1] < 0.6:
        cell = 4 + int(u[2] * 20)
        small = rng.integers(0, 256, (max(1, height // cell), max(1, width // cell), 3), dtype=np.uint8)
        tex = cv2.resize(small, (width, height),
                         interpolation=cv2.INTER_NEAREST if u[3] < 0.4 else cv2.INTER_LINEAR)
        alpha = 0.15 + 0.35 * float(u[4])
        img = cv2.addWeighted(img, 1 - alpha, tex, alpha, 0)
    big = max(height, width)
    if u[5] < 0.3:  # parallel stripes
        ang = rng.uniform(0, np.pi)
        d = np.array([np.cos(ang), np.sin(ang)]) * big * 1.5
        n = np.array([-np.sin(ang), np.cos(ang)])
        step = rng.uniform(max(8.0, big / 40), max(9.0, big / 8))
        offs = np.arange(-big, big, step)[:, None]
        c = np.array([width / 2, height / 2]) + n * offs
        segs = np.stack([c - d, c + d], 1).astype(np.int32)
        cv2.polylines(img, list(segs), False, _col(rng.uniform(0, 255, 3)), int(rng.integers(1, 6)))
    num = int(rng.integers(3, 14))
    kinds = rng.integers(0, 4, num)
    cols = rng.uniform(0, 255, (num, 3)).tolist()
    geo = rng.uniform(size=(num, 5)).tolist()
    for kind, col, (gx, gy, gr, ga, gb) in zip(kinds, cols, geo):
        col = tuple(col)
        cx, cy = int(gx * width), int(gy * height)
        r = int((0.04 + 0.26 * gr) * big)
        if kind == 0:
            cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + int((0.3 + 1.2 * ga) * r)), col, -1)
        elif kind == 1:
            cv2.circle(img, (cx, cy), r, col, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.ellipse(img, (cx, cy), (r, max(1, int(r * (0.2 + 0.8 * ga)))), 180 * gb, 0, 360, col, -1,
                        cv2.LINE_AA)
        else:
            pts = (np.array([cx, cy]) + rng.uniform(-r, r, (3 + int(ga * 4), 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], col, cv2.LINE_AA)
    num = int(rng.integers(2, 8))
    walks = np.cumsum(rng.normal(0, big * 0.1, (num, 6, 2)), axis=1)
    walks = (walks + rng.uniform(0, 1, (num, 1, 2)) * [width, height]).astype(np.int32)
    cols = rng.uniform(0, 255, (num, 3)).tolist()
    thick = rng.integers(1, 6, num).tolist()
    for pts, col, th in zip(walks, cols, thick):
        cv2.polylines(img, [pts], False, tuple(col), th, cv2.LINE_AA)
    if u[6] < 0.4:  # out-of-focus background
        img = _fast_blur(img, 0.7 + 2.5 * float(u[7]))
    return img


def _fast_blur(img, sigma):
    """Gaussian-like blur whose cost does not grow with sigma (blur at reduced resolution)."""
    h, w = img.shape[:2]
    if sigma <= 2.0:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    f = sigma / 1.5
    small = cv2.resize(img, (max(1, int(round(w / f))), max(1, int(round(h / f)))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def draw_distractor(rng, img, size):
    """A face-like pattern that is not a human face (no skin, hair or shoulders)."""
    h, w = img.shape[:2]
    r = max(4.0, size / 2)
    cx, cy = rng.uniform(r, max(r + 1, w - r)), rng.uniform(r, max(r + 1, h - r))
    col = _col([(60, 170, 70), (60, 90, 200), (140, 140, 150), (200, 200, 40), (150, 60, 170)][rng.integers(5)])
    ar = rng.uniform(0.7, 1.3)
    p = _Painter(img, r, rng.uniform(-40, 40), cx, cy)
    p.ellipse(0, 0, 1, ar, col)
    p.ellipse(0, 0, 1, ar, _mix(col, (0, 0, 0), 0.5), t=0.06)
    dot = _col(rng.uniform(0, 80, 3))
    for k in (-1, 1):
        p.ellipse(k * 0.38, -0.25, 0.12, 0.12, dot)
    if rng.uniform() < 0.6:
        p.ellipse(0, 0.2, 0.45, 0.3, dot, t=0.08, a0=20, a1=160)


def _relight(rng, img, noise):
    """Lighting gradient, gain, contrast, colour cast, sensor noise -> new uint8 image."""
    h, w = img.shape[:2]
    gain = rng.uniform(0.78, 1.15)
    contrast = rng.uniform(0.8, 1.15)
    cast = rng.uniform(0.93, 1.07, 3)
    grad = rng.uniform(0, 0.35)
    ang = rng.uniform(0, 2 * np.pi)
    oy, ox = int(rng.integers(0, 512 - min(h, 512) + 1)), int(rng.integers(0, 512 - min(w, 512) + 1))
    mean = 128.0  # contrast pivots about mid-grey
    # -4.5: the sensor noise added below is uniform in 0..9
    lut = np.clip((np.arange(256) - mean) * contrast * gain + mean * gain - 4.5, 0, 255).astype(np.uint8)
    out = cv2.LUT(img, lut)
    yy, xx = np.mgrid[0:4, 0:4] / 3.0 - 0.5
    g = 1.0 + grad * (np.cos(ang) * xx + np.sin(ang) * yy)
    G = np.clip(np.round(g[..., None] * cast * 128), 0, 255).astype(np.uint8)
    out = cv2.multiply(out, cv2.resize(G, (w, h), interpolation=cv2.INTER_LINEAR), scale=1 / 128)
    tile = noise[oy:oy + h, ox:ox + w]
    if tile.shape[:2] == (h, w):
        out = cv2.add(out, tile)
    return out


def _scene_size(rng):
    short = rng.uniform(160, 340)
    aspect = rng.uniform(1.0, 1.45)
    long_ = min(480.0, short * aspect)
    if rng.uniform() < 0.5:
        return int(round(long_)), int(round(short))
    return int(round(short)), int(round(long_))


def _boxes_overlap(b, others, pad=0.0):
    for o in others:
        if b[0] < o[2] + pad and o[0] < b[2] + pad and b[1] < o[3] + pad and o[1] < b[3] + pad:
            return True
    return False


def render_image(seed, index, face, extra_faces, noise):
    """-> (wild uint8 RGB, aligned uint8 RGB, boxes [K,4] (x0,y0,x1,y1) dominant first,
    landmarks_wild [5,2], landmarks_aligned [5,2])."""
    rng = np.random.default_rng([seed, 7, index])
    h, w = _scene_size(rng)
    img = draw_clutter(rng, h, w)
    scene = img.copy()  # the face-free scene, for the aligned crop's background
    short = min(h, w)
    for _ in range(int(rng.poisson(0.6))):
        draw_distractor(rng, img, rng.uniform(0.1, 0.4) * short)
    x0, y0, x1, y1 = face.box()
    bw, bh = x1 - x0, y1 - y0
    frac = rng.uniform(0.12, 0.6 if not extra_faces else 0.38)
    scale = frac * short / bh
    theta = rng.uniform(-20, 20)
    placements = []  # (face, scale, theta, box)
    main_ops = record_figure(face)

    def place(f, s, th, avoid, pad):
        fx0, fy0, fx1, fy1 = f.box()
        pw, phh = (fx1 - fx0) * s, (fy1 - fy0) * s
        for _ in range(25):
            cx = rng.uniform(pw / 2 + 1, w - pw / 2 - 1)
            cy = rng.uniform(phh / 2 + 1, h - phh / 2 - 1)
            box = (cx - pw / 2, cy - phh / 2, cx + pw / 2, cy + phh / 2)
            if not _boxes_overlap(box, avoid, pad):
                return box
        return None

    main_box = place(face, scale, theta, [], 0)
    placements.append((face, scale, theta, main_box))
    avoid = [(main_box[0] - (main_box[2] - main_box[0]) * 0.9, main_box[1],
              main_box[2] + (main_box[2] - main_box[0]) * 0.9, float(h))]
    for ef in extra_faces:
        s2 = scale * rng.uniform(0.5, 0.9)
        th2 = rng.uniform(-20, 20)
        b2 = place(ef, s2, th2, avoid, 0)
        if b2 is not None:
            placements.append((ef, s2, th2, b2))
            avoid.append(b2)
    # draw smaller faces first, the dominant last (on top)
    for f, s, th, box in sorted(placements[1:], key=lambda t: t[1]) + placements[:1]:
        fx0, fy0, fx1, fy1 = f.box()
        c = np.array([(fx0 + fx1) / 2, (fy0 + fy1) / 2])
        rad = math.radians(th)
        rot = np.array([[math.cos(rad), math.sin(rad)], [-math.sin(rad), math.cos(rad)]]) * s
        origin = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]) - c @ rot
        p = _Painter(img, s, th, origin[0], origin[1])
        p.replay(main_ops if f is face else record_figure(f))
        if f is face:
            lm_wild = p.map(f.landmarks())
            main_painter = p
    blur_sigma = 0.2 * scale if face.has("Blurry") else 0.0
    if blur_sigma > 0.3:
        img = _fast_blur(img, blur_sigma)
    light_state = rng.bit_generator.state
    img = _relight(rng, img, noise)
    # aligned crop: same face, canonical pose, its own background, same light
    # aligned crop: the same scene warped by the similarity that puts the eyes at their
    # aligned place (as CelebA made img_align_celeba), the figure re-drawn crisp on it
    aw, ah = ALIGNED_SIZE
    pa = _Painter(None, ALIGNED_IOD, 0.0, aw / 2.0, ALIGNED_EYE_Y)
    B = np.linalg.solve(main_painter.A, pa.A)  # wild row-vector -> aligned row-vector
    c = pa.t - main_painter.t @ B
    al = cv2.warpAffine(scene, np.concatenate([B.T, c[:, None]], 1), (aw, ah), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT)
    pa.img = al
    pa.replay(main_ops)
    if face.has("Blurry"):
        al = _fast_blur(al, 0.2 * ALIGNED_IOD)
    lrng = np.random.default_rng()
    lrng.bit_generator.state = light_state
    al = _relight(lrng, al, noise)
    lm_al = pa.map(face.landmarks())
    boxes = np.array([b for _, _, _, b in placements], float)
    return img, al, boxes, lm_wild, lm_al


def _encode(img):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


# --------------------------------------------------------------------------- dataset plan

@dataclasses.dataclass
class _Plan:
    filenames: list
    identities: np.ndarray
    partition: np.ndarray
    labels: np.ndarray
    full_beard: np.ndarray
    traits: dict
    num_extra: np.ndarray


def plan_dataset(num_identities, images_per_identity, seed, multi_face_rate=0.05):
    """Labels, identities, partition and file order (cheap; no pixels)."""
    if num_identities < 1 or images_per_identity < 1:
        raise ValueError(f"need >= 1 identity and image, got {num_identities}, {images_per_identity}")
    rng = np.random.default_rng([seed, 0])
    ids = np.arange(1, num_identities + 1)
    perm = rng.permutation(ids)
    n_val = max(1, int(round(num_identities * 0.1))) if num_identities >= 3 else 0
    n_test = n_val
    n_train = num_identities - n_val - n_test
    part_of = {}
    for k, i in enumerate(perm):
        part_of[int(i)] = 0 if k < n_train else 1 if k < n_train + n_val else 2
    labels, beards, idents, parts, traits = [], [], [], [], {}
    for i in ids:
        lab, fb = sample_labels(np.random.default_rng([seed, 1, int(i)]),
                                np.random.default_rng([seed, 2, int(i)]), images_per_identity)
        traits[int(i)] = identity_traits(np.random.default_rng([seed, 3, int(i)]), lab[0])
        labels.append(lab)
        beards.append(fb)
        idents.append(np.full(images_per_identity, i))
        parts.append(np.full(images_per_identity, part_of[int(i)]))
    labels, beards = np.concatenate(labels), np.concatenate(beards)
    idents, parts = np.concatenate(idents), np.concatenate(parts)
    # CelebA order: train, val, test; shuffled inside each partition
    order = np.concatenate([rng.permutation(np.flatnonzero(parts == p)) for p in (0, 1, 2)])
    n = len(order)
    width = max(6, len(str(n)))
    filenames = [f"{k + 1:0{width}d}.jpg" for k in range(n)]
    extra = np.where(rng.uniform(size=n) < multi_face_rate, rng.integers(1, 3, n), 0)
    return _Plan(filenames, idents[order].astype(np.int32), parts[order].astype(np.int8),
                 labels[order], beards[order], traits, extra)


_WORKER = {}


def _init_worker(seed, plan, out):
    _WORKER.update(seed=seed, plan=plan, out=out, noise=_noise_tile(seed))


def _render_one(k):
    seed, plan, out, noise = _WORKER["seed"], _WORKER["plan"], _WORKER["out"], _WORKER["noise"]
    frng = np.random.default_rng([seed, 5, k])
    face = sample_face(frng, plan.labels[k], plan.traits[int(plan.identities[k])], plan.full_beard[k])
    extra = []
    for _ in range(int(plan.num_extra[k])):  # other people: random traits, not listed identities
        lab, fb = sample_labels(frng, frng, 1)
        extra.append(sample_face(frng, lab[0], identity_traits(frng, lab[0]), fb[0]))
    wild, aligned, boxes, lm_w, lm_a = render_image(seed, k, face, extra, noise)
    name = plan.filenames[k]
    (out / "img_celeba" / name).write_bytes(_encode(wild))
    (out / "img_align_celeba" / name).write_bytes(_encode(aligned))
    return k, wild.shape[:2], boxes, lm_w, lm_a


def _render_background(k):
    seed, out, noise = _WORKER["seed"], _WORKER["out"], _WORKER["noise"]
    rng = np.random.default_rng([seed, 9, k])
    h, w = _scene_size(rng)
    img = draw_clutter(rng, h, w)
    for _ in range(int(rng.poisson(0.8))):
        draw_distractor(rng, img, rng.uniform(0.1, 0.4) * min(h, w))
    img = _relight(rng, img, noise)
    (out / "backgrounds" / f"bg_{k + 1:06d}.jpg").write_bytes(_encode(img))
    return k


def _xywh_rows(boxes, h, w):
    """(x0,y0,x1,y1) float -> int (x_1, y_1, width, height) clipped to the image."""
    x0 = np.clip(np.round(boxes[:, 0]), 0, w - 1)
    y0 = np.clip(np.round(boxes[:, 1]), 0, h - 1)
    x1 = np.clip(np.round(boxes[:, 2]), x0 + 1, w)
    y1 = np.clip(np.round(boxes[:, 3]), y0 + 1, h)
    return np.stack([x0, y0, x1 - x0, y1 - y0], 1).astype(int)


def generate_dataset(out_dir, num_identities, images_per_identity, seed, multi_face_rate=0.05,
                     num_backgrounds=None, workers=1, progress=True):
    """Writes the synthetic dataset to `out_dir` (see the module docstring). Returns out_dir."""
    out = Path(out_dir)
    for d in ("img_celeba", "img_align_celeba", "backgrounds"):
        (out / d).mkdir(parents=True, exist_ok=True)
    plan = plan_dataset(num_identities, images_per_identity, seed, multi_face_rate)
    n = len(plan.filenames)
    if num_backgrounds is None:
        num_backgrounds = max(10, n // 3)  # half calibrate/train LNet, half evaluate
    results = [None] * n
    t0, c0 = time.time(), time.process_time()
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    if workers > 1:
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        pool = ctx.Pool(workers, _init_worker, (seed, plan, out))
        it = pool.imap_unordered(_render_one, range(n), chunksize=16)
    else:
        pool = None
        _init_worker(seed, plan, out)
        it = map(_render_one, range(n))
    try:
        for done, r in enumerate(it, start=1):
            results[r[0]] = r[1:]
            if done % 200 == 0 or done == n:
                rate = done / max(time.time() - t0, 1e-9)
                log(f"synthetic: {done}/{n} images, {rate:.1f} images/s")
        t_img, c_img = time.time() - t0, time.process_time() - c0
        if pool is not None:
            list(pool.imap_unordered(_render_background, range(num_backgrounds), chunksize=8))
        else:
            list(map(_render_background, range(num_backgrounds)))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    _write_lists(out, plan, results)
    cpu = f", {n / max(c_img, 1e-9):.1f} images per CPU-second" if pool is None else ""
    log(f"synthetic: wrote {n} images ({n / max(t_img, 1e-9):.1f} images/s wall{cpu}; each = one "
        f"in-the-wild + one aligned JPEG) and {num_backgrounds} backgrounds to {out} in "
        f"{time.time() - t0:.1f}s")
    return out


def _write_lists(out, plan, results):
    n = len(plan.filenames)
    names = plan.filenames
    lines = [str(n), " ".join(ATTRIBUTE_NAMES)]
    signs = np.where(plan.labels > 0, " 1", "-1")
    lines += [name + " " + " ".join(row) for name, row in zip(names, signs)]
    (out / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (out / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, plan.partition)))
    (out / "identity_CelebA.txt").write_text(
        "".join(f"{name} {i}\n" for name, i in zip(names, plan.identities)))
    bbox = [str(n), "image_id x_1 y_1 width height"]
    allf = []
    lmw = [str(n), " ".join(f"{m}_{c}" for m in ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
                            for c in ("x", "y"))]
    lma = list(lmw)
    for name, (shape, boxes, lm_w, lm_a) in zip(names, results):
        rows = _xywh_rows(boxes, *shape)
        bbox.append(f"{name} " + " ".join(str(v) for v in rows[0]))
        allf += [f"{name} " + " ".join(str(v) for v in r) for r in rows]
        lmw.append(f"{name} " + " ".join(str(int(round(v))) for v in lm_w.ravel()))
        lma.append(f"{name} " + " ".join(str(int(round(v))) for v in lm_a.ravel()))
    (out / "list_bbox_celeba.txt").write_text("\n".join(bbox) + "\n")
    (out / "list_bbox_all_faces.txt").write_text(
        "\n".join([str(len(allf)), "image_id x_1 y_1 width height"] + allf) + "\n")
    (out / "list_landmarks_celeba.txt").write_text("\n".join(lmw) + "\n")
    (out / "list_landmarks_align_celeba.txt").write_text("\n".join(lma) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tfattr.data.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--identities", required=True, type=int)
    ap.add_argument("--images-per-identity", required=True, type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--multi-face-rate", type=float, default=0.05)
    ap.add_argument("--backgrounds", type=int, default=None,
                    help="face-free images (default: a third of the images, at least 10)")
    ap.add_argument("--workers", type=int, default=1, help="processes (output is identical for any value)")
    args = ap.parse_args(argv)
    generate_dataset(args.out, args.identities, args.images_per_identity, args.seed,
                     multi_face_rate=args.multi_face_rate, num_backgrounds=args.backgrounds,
                     workers=args.workers)


if __name__ == "__main__":
    main()
