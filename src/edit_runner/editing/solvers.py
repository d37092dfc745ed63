"""The closed-form "spread" solvers of the locate-then-edit family: every normal equation in one place.

Pure linear algebra, no model code. Conventions (SPEC, notation line):

* math layout: a weight ``W`` is ``d_out × d_in`` (GPT-2 ``Conv1D`` stores the transpose; the caller
  converts);
* keys ``K`` are ``d_in × n`` (one column per edit), residuals ``R`` are ``d_out × n``;
* ``C = E[k kᵀ]`` is ``d_in × d_in`` and ``λ`` is ``mom2_update_weight``;
* every function returns ``ΔW`` (``d_out × d_in``) in float64 on the device of its key input.
  Inputs may be float32: they are cast. Solves are float64 except AlphaEdit's, which follows its
  reference and computes in float32 unless asked otherwise (SPEC Part B §5).

Spreading over several layers (MEMIT ``1/(L−i)``, PMET ``1/√(L−i)``) is linear in the residual, so the
caller divides ``R`` (or ``ΔW``) by :func:`spread_divisor`.

Which function is which method:

=====================  ==========================================================================
MEMIT / PMET / D4S     :func:`preservation_matrix` + :func:`memit_delta` (D4S: :class:`RunningSums`)
norm constraint        ``norm_lambda`` of :func:`preservation_matrix` (SPEC §7.2, seed 004)
ENCORE memory          ``prev_kkt`` of :func:`preservation_matrix` (SPEC §7.2)
EMMET                  :func:`emmet_delta` (SPEC §5)
AlphaEdit              :func:`null_space_projector` + :func:`alphaedit_delta` (SPEC §6)
ROME / r-ROME          :func:`rome_delta` (SPEC §2, Part B §6)
=====================  ==========================================================================
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from edit_runner.errors import ConfigError

__all__ = [
    "RunningSums",
    "alphaedit_delta",
    "emmet_delta",
    "memit_delta",
    "null_space_projector",
    "preservation_matrix",
    "rome_delta",
    "spread_divisor",
]

SPREAD_MODES = ("divide", "sqrt", "none")


# --------------------------------------------------------------------------------------------------
# helpers


def _as(x: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``x`` as ``dtype`` on ``device`` (no copy when already there)."""
    return x.to(device=device, dtype=dtype)


def _check_square(name: str, m: Tensor, size: int | None = None) -> None:
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(m.shape)}")
    if size is not None and m.shape[0] != size:
        raise ValueError(f"{name} must be {size} × {size} (d_in), got shape {tuple(m.shape)}")


def _check_keys_residuals(K: Tensor, R: Tensor) -> None:
    if K.dim() != 2 or R.dim() != 2:
        raise ValueError(
            f"K must be d_in × n and R d_out × n (2-D), got K {tuple(K.shape)} and R {tuple(R.shape)}"
        )
    if K.shape[1] != R.shape[1]:
        raise ValueError(
            f"K and R must have one column per edit: K has {K.shape[1]} columns, R has {R.shape[1]}"
        )


def _eye(n: int, like: Tensor) -> Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------------
# MEMIT family


def preservation_matrix(
    C: Tensor,
    mom2_weight: float,
    *,
    norm_lambda: float = 0.0,
    prev_kkt: Tensor | None = None,
) -> Tensor:
    """The "preservation" side of the normal equations: ``λ·C + α·I + Σ_p K_p K_pᵀ`` (float64).

    Args:
        C: second moment of the layer's keys ``E[k kᵀ]``, ``d_in × d_in`` (any float dtype).
        mom2_weight: ``λ`` (``mom2_update_weight``), SPEC §1.6.
        norm_lambda: ``α`` (``update_norm_lambda``), the Frobenius-norm constraint ``α‖ΔW‖²_F`` of the
            norm-constraint wrapper / ENCORE (SPEC §7.2, seed 004); EMMET's ``C'`` uses it too (SPEC §5).
        prev_kkt: ``Σ_p K_p K_pᵀ`` over previous batches (``d_in × d_in``), ENCORE's ``add_prev_edits``
            memory (SPEC §7.2); ``None`` for none.

    Returns:
        ``d_in × d_in`` float64 tensor on ``C``'s device. Feed it to :func:`memit_delta`,
        :func:`emmet_delta` (as ``C'``) or :meth:`RunningSums.delta`.
    """
    _check_square("C", C)
    d = C.shape[0]
    out = C.to(torch.float64) * float(mom2_weight)
    if norm_lambda:
        out = out + float(norm_lambda) * _eye(d, out)
    if prev_kkt is not None:
        _check_square("prev_kkt", prev_kkt, d)
        out = out + _as(prev_kkt, torch.float64, out.device)
    return out


def memit_delta(K: Tensor, R: Tensor, preservation: Tensor) -> Tensor:
    """MEMIT's normal equations: ``ΔW = R Kᵀ (preservation + K Kᵀ)⁻¹`` (SPEC §1.6, §4, §7.2).

    Solved as the reference does: ``A = solve(preservation + K Kᵀ, K)`` (``d_in × n``), ``ΔW = R Aᵀ``,
    in float64. With ``preservation = λC`` this is the minimiser of ``λ‖ΔW K0‖² + ‖ΔW K − R‖²``;
    ``+ αI`` adds ``α‖ΔW‖²_F`` and ``+ Σ K_pK_pᵀ`` adds ``Σ‖ΔW K_p‖²`` (ENCORE).

    Args:
        K: keys, ``d_in × n``.
        R: residuals (already divided by the spread divisor if spreading), ``d_out × n``.
        preservation: ``d_in × d_in``, usually from :func:`preservation_matrix`.

    Returns:
        ``ΔW``, ``d_out × d_in``, float64 on ``K``'s device.
    """
    _check_keys_residuals(K, R)
    _check_square("preservation", preservation, K.shape[0])
    dev = K.device
    K64 = _as(K, torch.float64, dev)
    R64 = _as(R, torch.float64, dev)
    A = torch.linalg.solve(_as(preservation, torch.float64, dev) + K64 @ K64.T, K64)
    return R64 @ A.T


def emmet_delta(K: Tensor, R: Tensor, preservation: Tensor, emmet_lambda: float) -> Tensor:
    """EMMET's equality-constrained update (SPEC §5): ``ΔW = R D⁻¹ Kᵀ C'⁻¹`` with ``D = Kᵀ C'⁻¹ K``.

    ``D += emmet_lambda · I`` only when ``n > 1`` (as the reference). With ``emmet_lambda = 0`` this is
    ``argmin tr(ΔW C' ΔWᵀ) s.t. ΔW K = R``; a scale of ``C'`` then cancels. ``D⁻¹`` falls back to
    the pseudo-inverse when ``D`` is exactly singular (the reference's ``inverse`` → ``pinv`` on
    failure). ``C'⁻¹`` is applied through ``solve`` (``Y = C'⁻¹ K``), not an explicit inverse.

    Args:
        K: keys, ``d_in × n``.
        R: residuals, ``d_out × n``.
        preservation: ``C' = λC (+ αI)``, ``d_in × d_in`` (:func:`preservation_matrix`).
        emmet_lambda: ridge ``β`` on ``D`` for batches (reference default 0.1).

    Returns:
        ``ΔW``, ``d_out × d_in``, float64 on ``K``'s device.
    """
    _check_keys_residuals(K, R)
    _check_square("preservation", preservation, K.shape[0])
    dev = K.device
    K64 = _as(K, torch.float64, dev)
    R64 = _as(R, torch.float64, dev)
    Y = torch.linalg.solve(_as(preservation, torch.float64, dev), K64)  # C'⁻¹ K, d_in × n
    n = K64.shape[1]
    D = K64.T @ Y
    if n > 1 and emmet_lambda:
        D = D + float(emmet_lambda) * _eye(n, D)
    try:
        adj = torch.linalg.solve(D, Y.T)  # D⁻¹ Kᵀ C'⁻¹ (C' symmetric), n × d_in
    except torch.linalg.LinAlgError:
        adj = torch.linalg.pinv(D) @ Y.T
    return R64 @ adj


# --------------------------------------------------------------------------------------------------
# AlphaEdit


def null_space_projector(C: Tensor, threshold: float, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """AlphaEdit's projector onto the (approximate) null space of ``C`` (SPEC §6).

    ``U, S, _ = svd(C)``; ``P = U[:, S < threshold] U[:, S < threshold]ᵀ`` (absolute threshold,
    reference default ``2e-2``; ``C`` unscaled, i.e. without ``λ``). Computed in ``dtype``
    (float32 like the reference; float64 allowed, SPEC Part B §5).

    Args:
        C: ``E[k kᵀ]`` of the unedited model, ``d_in × d_in``.
        threshold: singular values strictly below it span the null space.
        dtype: computation and result dtype.

    Returns:
        ``P``, ``d_in × d_in`` symmetric idempotent, in ``dtype`` on ``C``'s device.
    """
    _check_square("C", C)
    U, S, _ = torch.linalg.svd(C.to(dtype), full_matrices=False)
    U0 = U[:, S < threshold]
    return U0 @ U0.T


def alphaedit_delta(
    K: Tensor,
    R: Tensor,
    P: Tensor,
    prev_kkt: Tensor | None,
    l2: float,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """AlphaEdit's null-space-projected update (SPEC §6).

    ``ΔW = R Kᵀ P ((K Kᵀ + prev_kkt) P + l2·I)⁻¹``, computed literally as the reference does,
    ``upd = solve(P (K Kᵀ + prev_kkt) + l2·I, P K Rᵀ)`` and ``ΔW = updᵀ``, in ``dtype``. For
    ``l2 > 0`` the rows of ``ΔW`` lie in the range of ``P``, so ``ΔW`` annihilates the preserved
    subspace (``ΔW U_keep = 0``).

    Args:
        K: keys of this batch, ``d_in × n``.
        R: residuals (already spread-divided), ``d_out × n``.
        P: projector from :func:`null_space_projector`, ``d_in × d_in``.
        prev_kkt: ``cache_c = Σ_p K_p K_pᵀ`` over previous batches (``d_in × d_in``) or ``None`` (zero).
        l2: ridge ``L2`` (reference default 10; EasyEdit llama3-8b 1).
        dtype: computation dtype (float32 like the reference; float64 allowed).

    Returns:
        ``ΔW``, ``d_out × d_in``, cast to float64 on ``K``'s device (computed in ``dtype``).
    """
    _check_keys_residuals(K, R)
    d = K.shape[0]
    _check_square("P", P, d)
    dev = K.device
    Kc = _as(K, dtype, dev)
    Rc = _as(R, dtype, dev)
    Pc = _as(P, dtype, dev)
    kkt = Kc @ Kc.T
    if prev_kkt is not None:
        _check_square("prev_kkt", prev_kkt, d)
        kkt = kkt + _as(prev_kkt, dtype, dev)
    lhs = Pc @ kkt + float(l2) * _eye(d, Kc)
    upd = torch.linalg.solve(lhs, Pc @ Kc @ Rc.T)  # d_in × d_out (weight layout of Conv1D)
    return upd.T.to(torch.float64)


# --------------------------------------------------------------------------------------------------
# ROME


def rome_delta(
    k_star: Tensor,
    k_bare: Tensor | None,
    residual: Tensor,
    C: Tensor | None = None,
    *,
    mom2_adjustment: bool = True,
    consistent_keys: bool = False,
) -> Tensor:
    """ROME's rank-one update (SPEC §2, Part B §6): ``ΔW = residual · uᵀ / (uᵀ k)``.

    ``u = C⁻¹ k_star`` (``k_star`` itself when ``mom2_adjustment`` is false), normalised;
    ``k = k_bare`` (original ROME) or ``k_star`` when ``consistent_keys`` (r-ROME). Hence
    ``(W + ΔW) k = W k + residual``: with ``residual = v* − W k − b`` the edited layer maps ``k`` to
    ``v*`` exactly. With ``consistent_keys`` and ``mom2_adjustment`` this is the minimum-``C``-norm
    update with ``ΔW k_star = residual``, i.e. :func:`emmet_delta` with one edit and ``C' = C``.

    Args:
        k_star: template-averaged key, ``d_in``.
        k_bare: key of the bare prompt, ``d_in``; may be ``None`` when ``consistent_keys``.
        residual: ``v* − W k − b``, ``d_out`` (computed by the caller for the same ``k``).
        C: ``E[k kᵀ]``, ``d_in × d_in``; required when ``mom2_adjustment``.
        mom2_adjustment: use ``C⁻¹`` in ``u`` (false in the llama ROME configs).
        consistent_keys: r-ROME fix (``k_star`` in the denominator too).

    Returns:
        ``ΔW``, ``d_out × d_in`` rank one, float64 on ``k_star``'s device.
    """
    if k_star.dim() != 1 or residual.dim() != 1:
        raise ValueError(
            f"k_star and residual must be vectors, got {tuple(k_star.shape)} and {tuple(residual.shape)}"
        )
    dev = k_star.device
    ks = _as(k_star, torch.float64, dev)
    if consistent_keys:
        k = ks
    else:
        if k_bare is None:
            raise ValueError("rome_delta needs k_bare unless consistent_keys=True (r-ROME)")
        if k_bare.shape != k_star.shape:
            raise ValueError(f"k_bare {tuple(k_bare.shape)} and k_star {tuple(k_star.shape)} differ in shape")
        k = _as(k_bare, torch.float64, dev)
    if mom2_adjustment:
        if C is None:
            raise ValueError("rome_delta with mom2_adjustment=True needs the covariance C")
        _check_square("C", C, ks.shape[0])
        u = torch.linalg.solve(_as(C, torch.float64, dev), ks)
    else:
        u = ks
    u = u / u.norm()
    denom = torch.dot(u, k)
    return torch.outer(_as(residual, torch.float64, dev), u) / denom


# --------------------------------------------------------------------------------------------------
# D4S


class RunningSums:
    """D4S running sums (SPEC §8, Part B §11): per layer ``S_RK = Σ R_b K_bᵀ`` and ``S_KK = Σ K_b K_bᵀ``.

    Float64, ``d_out × d_in`` and ``d_in × d_in`` per layer: memory is O(1) in the number of edits.
    :meth:`delta` gives ``S_RK (S_KK + preservation)⁻¹``, which equals :func:`memit_delta` on all the
    added keys and residuals stacked (seed 003 eq. 13). Spreading (``÷(L−i)``) is the caller's: scale
    the residuals before :meth:`add` or the result of :meth:`delta`. Run state, not a module global:
    checkpoint it with :meth:`state_dict` / :meth:`load_state_dict`.
    """

    def __init__(self) -> None:
        self._s_rk: dict[int, Tensor] = {}
        self._s_kk: dict[int, Tensor] = {}
        self._count: dict[int, int] = {}

    def layers(self) -> list[int]:
        """Layers that have received at least one :meth:`add`, ascending."""
        return sorted(self._s_kk)

    def __contains__(self, layer: object) -> bool:
        return layer in self._s_kk

    def add(self, layer: int, K: Tensor, R: Tensor) -> None:
        """Accumulate a batch: ``S_RK[layer] += R Kᵀ``, ``S_KK[layer] += K Kᵀ`` (float64).

        Args:
            layer: layer index.
            K: keys ``d_in × n`` (a ``d_in`` vector is one edit).
            R: residuals ``d_out × n`` (a ``d_out`` vector is one edit).
        """
        if K.dim() == 1:
            K = K[:, None]
        if R.dim() == 1:
            R = R[:, None]
        _check_keys_residuals(K, R)
        layer = int(layer)
        dev = self._s_kk[layer].device if layer in self._s_kk else K.device
        K64 = _as(K, torch.float64, dev)
        R64 = _as(R, torch.float64, dev)
        rk = R64 @ K64.T
        kk = K64 @ K64.T
        if layer in self._s_kk:
            if self._s_rk[layer].shape != rk.shape:
                raise ValueError(
                    f"layer {layer}: running sums are {tuple(self._s_rk[layer].shape)} (d_out × d_in), "
                    f"this batch gives {tuple(rk.shape)}"
                )
            self._s_rk[layer] = self._s_rk[layer] + rk
            self._s_kk[layer] = self._s_kk[layer] + kk
            self._count[layer] += K.shape[1]
        else:
            self._s_rk[layer] = rk
            self._s_kk[layer] = kk
            self._count[layer] = K.shape[1]

    def num_edits(self, layer: int) -> int:
        """Number of key/residual columns added to ``layer`` so far (0 if none)."""
        return self._count.get(int(layer), 0)

    def delta(self, layer: int, preservation: Tensor) -> Tensor:
        """``ΔW = S_RK (S_KK + preservation)⁻¹`` (``solve(..., left=False)``, float64), ``d_out × d_in``.

        Args:
            layer: layer index (must have received an :meth:`add`).
            preservation: ``λC (+ αI)``, ``d_in × d_in`` (:func:`preservation_matrix`).
        """
        layer = int(layer)
        if layer not in self._s_kk:
            raise KeyError(f"RunningSums has no edits for layer {layer} (layers: {self.layers()})")
        s_kk = self._s_kk[layer]
        _check_square("preservation", preservation, s_kk.shape[0])
        lhs = s_kk + _as(preservation, torch.float64, s_kk.device)
        return torch.linalg.solve(lhs, self._s_rk[layer], left=False)

    def state_dict(self) -> dict[str, Tensor]:
        """Plain dict of tensors (copies): ``s_rk.<layer>``, ``s_kk.<layer>``, ``count.<layer>``."""
        out: dict[str, Tensor] = {}
        for layer in self.layers():
            out[f"s_rk.{layer}"] = self._s_rk[layer].detach().clone()
            out[f"s_kk.{layer}"] = self._s_kk[layer].detach().clone()
            out[f"count.{layer}"] = torch.tensor(self._count[layer], dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replace the sums with those of :meth:`state_dict` (tensors are copied)."""
        s_rk: dict[int, Tensor] = {}
        s_kk: dict[int, Tensor] = {}
        count: dict[int, int] = {}
        for key, value in state.items():
            kind, _, layer_s = key.partition(".")
            try:
                layer = int(layer_s)
            except ValueError:
                raise ValueError(f"unexpected RunningSums state key {key!r}") from None
            if kind == "s_rk":
                s_rk[layer] = value.detach().to(torch.float64).clone()
            elif kind == "s_kk":
                s_kk[layer] = value.detach().to(torch.float64).clone()
            elif kind == "count":
                count[layer] = int(value)
            else:
                raise ValueError(f"unexpected RunningSums state key {key!r}")
        if not (set(s_rk) == set(s_kk) == set(count)):
            raise ValueError(
                "incomplete RunningSums state: every layer needs s_rk, s_kk and count "
                f"(got layers s_rk={sorted(s_rk)}, s_kk={sorted(s_kk)}, count={sorted(count)})"
            )
        self._s_rk, self._s_kk, self._count = s_rk, s_kk, count


# --------------------------------------------------------------------------------------------------
# spreading


def spread_divisor(mode: str, remaining: int) -> float:
    """Share of the residual given to a layer: ``R / spread_divisor(mode, L − i)`` (SPEC §1.6, §4).

    Args:
        mode: ``"divide"`` → ``remaining`` (MEMIT, EMMET, AlphaEdit, D4S), ``"sqrt"`` → ``√remaining``
            (PMET), ``"none"`` → 1 (single-layer methods). A string-valued Enum is accepted too.
        remaining: number of edited layers from this one up, ``L − i`` (≥ 1).
    """
    mode_s = str(getattr(mode, "value", mode))
    if remaining < 1:
        raise ValueError(f"remaining layers must be ≥ 1, got {remaining}")
    if mode_s == "divide":
        return float(remaining)
    if mode_s == "sqrt":
        return math.sqrt(remaining)
    if mode_s == "none":
        return 1.0
    raise ConfigError(f"unknown spread mode {mode_s!r}; valid choices: {', '.join(SPREAD_MODES)}")
