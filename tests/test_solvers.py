"""Identity tests of the closed-form solvers against independent formulations (SPEC Part C §2, §5–§8)."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from edit_runner.editing.solvers import (
    RunningSums,
    alphaedit_delta,
    emmet_delta,
    memit_delta,
    null_space_projector,
    preservation_matrix,
    rome_delta,
    spread_divisor,
)
from edit_runner.errors import ConfigError

F64 = torch.float64
D_IN, D_OUT, N = 12, 7, 5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=F64)


def _spd(g: torch.Generator, d: int = D_IN, samples: int = 40, ridge: float = 0.1) -> torch.Tensor:
    """A well-conditioned random second-moment matrix E[k kᵀ]."""
    X = _randn(g, d, samples)
    return X @ X.T / samples + ridge * torch.eye(d, dtype=F64)


def _spectrum(g: torch.Generator, eigvals: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """C = Q diag(eigvals) Qᵀ with a random orthogonal Q; returns (C, Q)."""
    Q, _ = torch.linalg.qr(_randn(g, len(eigvals), len(eigvals)))
    return Q @ torch.diag(torch.tensor(eigvals, dtype=F64)) @ Q.T, Q


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(F64) - b.to(F64)).norm() / b.to(F64).norm())


def _lstsq_delta(blocks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """argmin_ΔW Σ ‖ΔW A_j − B_j‖²_F via one stacked least-squares problem (transposed: A_jᵀ ΔWᵀ = B_jᵀ)."""
    A = torch.cat([a.T for a, _ in blocks], dim=0)
    B = torch.cat([b.T for _, b in blocks], dim=0)
    return torch.linalg.lstsq(A, B, driver="gelsd").solution.T


# --------------------------------------------------------------------------------------------------
# MEMIT / norm constraint / ENCORE memory


def test_memit_equals_stacked_least_squares() -> None:
    g = _gen(0)
    C = _spd(g)
    K, R = _randn(g, D_IN, N), _randn(g, D_OUT, N)
    lam = 3.0
    L = torch.linalg.cholesky(C)
    got = memit_delta(K, R, preservation_matrix(C, lam))
    zeros = torch.zeros(D_OUT, D_IN, dtype=F64)
    want = _lstsq_delta([(math.sqrt(lam) * L, zeros), (K, R)])
    assert got.shape == (D_OUT, D_IN) and got.dtype == F64
    assert _rel(got, want) < 1e-6


def test_memit_casts_float32_inputs() -> None:
    g = _gen(1)
    C = _spd(g)
    K, R = _randn(g, D_IN, N), _randn(g, D_OUT, N)
    ref = memit_delta(K.float().double(), R.float().double(), preservation_matrix(C.float().double(), 2.0))
    got = memit_delta(K.float(), R.float(), preservation_matrix(C.float(), 2.0))
    assert got.dtype == F64
    assert _rel(got, ref) < 1e-12


def test_norm_constraint_equals_least_squares_and_shrinks_update() -> None:
    g = _gen(2)
    C = _spd(g)
    K, R = _randn(g, D_IN, N), _randn(g, D_OUT, N)
    lam = 2.0
    L = torch.linalg.cholesky(C)
    zeros = torch.zeros(D_OUT, D_IN, dtype=F64)
    eye = torch.eye(D_IN, dtype=F64)
    norms = []
    for alpha in [0.0, 1.0, 10.0, 100.0]:
        got = memit_delta(K, R, preservation_matrix(C, lam, norm_lambda=alpha))
        want = _lstsq_delta([(math.sqrt(lam) * L, zeros), (math.sqrt(alpha) * eye, zeros), (K, R)])
        assert _rel(got, want) < 1e-6, alpha
        norms.append(float(got.norm()))
    assert all(a > b for a, b in itertools.pairwise(norms)), norms
    plain = memit_delta(K, R, preservation_matrix(C, lam))
    assert torch.equal(memit_delta(K, R, preservation_matrix(C, lam, norm_lambda=0.0)), plain)


def test_prev_edit_memory_equals_least_squares() -> None:
    """ENCORE's add_prev_edits: + Σ_p ‖ΔW K_p‖² (previous keys anchored to the current weights)."""
    g = _gen(3)
    C = _spd(g)
    K, R = _randn(g, D_IN, N), _randn(g, D_OUT, N)
    Kp = _randn(g, D_IN, 8)
    lam, alpha = 1.5, 0.5
    L = torch.linalg.cholesky(C)
    pres = preservation_matrix(C, lam, norm_lambda=alpha, prev_kkt=Kp @ Kp.T)
    expected = lam * C + alpha * torch.eye(D_IN, dtype=F64) + Kp @ Kp.T
    assert torch.allclose(pres, expected, rtol=1e-14, atol=1e-14)
    zeros = torch.zeros(D_OUT, D_IN, dtype=F64)
    want = _lstsq_delta(
        [
            (math.sqrt(lam) * L, zeros),
            (math.sqrt(alpha) * torch.eye(D_IN, dtype=F64), zeros),
            (Kp, torch.zeros(D_OUT, 8, dtype=F64)),
            (K, R),
        ]
    )
    assert _rel(memit_delta(K, R, pres), want) < 1e-6


def test_memit_rejects_mismatched_shapes() -> None:
    g = _gen(4)
    with pytest.raises(ValueError, match="one column per edit"):
        memit_delta(_randn(g, D_IN, N), _randn(g, D_OUT, N + 1), torch.eye(D_IN, dtype=F64))
    with pytest.raises(ValueError, match="d_in"):
        memit_delta(_randn(g, D_IN, N), _randn(g, D_OUT, N), torch.eye(D_IN + 1, dtype=F64))


# --------------------------------------------------------------------------------------------------
# EMMET


def _kkt_solution(K: torch.Tensor, R: torch.Tensor, Cp: torch.Tensor) -> torch.Tensor:
    """min tr(ΔW C' ΔWᵀ) s.t. ΔW K = R, row by row via the Lagrangian's block system
    [[2C', K], [Kᵀ, 0]] [δᵀ; μ] = [0; rᵀ]."""
    d, n = K.shape
    top = torch.cat([2 * Cp, K], dim=1)
    bottom = torch.cat([K.T, torch.zeros(n, n, dtype=F64)], dim=1)
    rhs = torch.cat([torch.zeros(d, R.shape[0], dtype=F64), R.T], dim=0)
    sol = torch.linalg.solve(torch.cat([top, bottom], dim=0), rhs)
    return sol[:d].T


def test_emmet_satisfies_constraints_and_equals_kkt() -> None:
    g = _gen(5)
    C = _spd(g)
    K, R = _randn(g, D_IN, N), _randn(g, D_OUT, N)
    Cp = preservation_matrix(C, 7.0, norm_lambda=0.3)
    got = emmet_delta(K, R, Cp, emmet_lambda=0.0)
    assert torch.allclose(got @ K, R, rtol=0, atol=1e-8)
    assert _rel(got, _kkt_solution(K, R, Cp)) < 1e-6
    # n == d_in: still exactly constrained
    Ksq, Rsq = _randn(g, D_IN, D_IN), _randn(g, D_OUT, D_IN)
    sq = emmet_delta(Ksq, Rsq, Cp, emmet_lambda=0.0)
    assert torch.allclose(sq @ Ksq, Rsq, rtol=0, atol=1e-8)


def test_emmet_lambda_cancels_without_ridge() -> None:
    g = _gen(6)
    C = _spd(g)
    K, R = _randn(g, D_IN, N), _randn(g, D_OUT, N)
    a = emmet_delta(K, R, preservation_matrix(C, 1.0), 0.0)
    b = emmet_delta(K, R, preservation_matrix(C, 15000.0), 0.0)
    assert _rel(b, a) < 1e-10
    # with the ridge on D, the scale of C' matters (so the test above can fail)
    ra = emmet_delta(K, R, preservation_matrix(C, 1.0), 0.1)
    rb = emmet_delta(K, R, preservation_matrix(C, 15000.0), 0.1)
    assert _rel(rb, ra) > 1e-3


def test_emmet_ridge_only_for_batches() -> None:
    g = _gen(7)
    C = _spd(g)
    k, r = _randn(g, D_IN, 1), _randn(g, D_OUT, 1)
    Cp = preservation_matrix(C, 1.0)
    assert torch.equal(emmet_delta(k, r, Cp, 0.1), emmet_delta(k, r, Cp, 0.0))
    K, R = _randn(g, D_IN, 3), _randn(g, D_OUT, 3)
    assert _rel(emmet_delta(K, R, Cp, 0.1), emmet_delta(K, R, Cp, 0.0)) > 1e-3


def test_emmet_pinv_fallback_on_singular_d() -> None:
    g = _gen(8)
    C = _spd(g)
    K, R = _randn(g, D_IN, 3), _randn(g, D_OUT, 3)
    K[:, 1] = 0.0  # D = Kᵀ C'⁻¹ K has an exactly zero row/column
    got = emmet_delta(K, R, C, 0.0)
    assert torch.isfinite(got).all()
    Y = torch.linalg.solve(C, K)
    want = R @ torch.linalg.pinv(K.T @ Y) @ Y.T
    assert _rel(got, want) < 1e-8
    # the non-degenerate columns are still satisfied
    assert torch.allclose((got @ K)[:, [0, 2]], R[:, [0, 2]], rtol=0, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# AlphaEdit

EIGS = [5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 1e-2, 5e-3, 1e-3, 1e-4, 1e-6]  # five below THRESHOLD
THRESHOLD = 2e-2


def test_null_space_projector_properties() -> None:
    g = _gen(9)
    C, Q = _spectrum(g, EIGS)
    null = torch.tensor(EIGS) < THRESHOLD
    for dtype, tol in [(torch.float32, 1e-5), (torch.float64, 1e-12)]:
        P = null_space_projector(C, THRESHOLD, dtype=dtype)
        assert P.dtype == dtype
        P64 = P.to(F64)
        assert torch.allclose(P64, P64.T, rtol=0, atol=tol)
        assert torch.allclose(P64 @ P64, P64, rtol=0, atol=tol)
        assert round(float(torch.trace(P64))) == int(null.sum())
        assert float((P64 @ Q[:, ~null]).norm()) < tol * 10
        assert torch.allclose(P64 @ Q[:, null], Q[:, null], rtol=0, atol=tol * 10)


def _alphaedit_direct(
    K: torch.Tensor, R: torch.Tensor, U_null: torch.Tensor, Kp: torch.Tensor, l2: float
) -> torch.Tensor:
    """ΔW = Y U_nullᵀ with Y = argmin ‖Y B − R‖² + ‖Y B_p‖² + l2‖Y‖², B = U_nullᵀ K, B_p = U_nullᵀ K_p:
    the least-squares problem solved directly in the null-space coordinates."""
    m = U_null.shape[1]
    B, Bp = U_null.T @ K, U_null.T @ Kp
    Y = _lstsq_delta(
        [
            (B, R),
            (Bp, torch.zeros(R.shape[0], Kp.shape[1], dtype=F64)),
            (math.sqrt(l2) * torch.eye(m, dtype=F64), torch.zeros(R.shape[0], m, dtype=F64)),
        ]
    )
    return Y @ U_null.T


def test_alphaedit_annihilates_preserved_subspace_and_equals_direct() -> None:
    g = _gen(10)
    C, Q = _spectrum(g, EIGS)
    null = torch.tensor(EIGS) < THRESHOLD
    U_keep, U_null = Q[:, ~null], Q[:, null]
    K, R = _randn(g, D_IN, N), _randn(g, D_OUT, N)
    Kp = _randn(g, D_IN, 6)
    l2 = 1.0
    want = _alphaedit_direct(K, R, U_null, Kp, l2)
    for dtype, ann_tol, eq_tol in [(torch.float64, 1e-10, 1e-8), (torch.float32, 1e-5, 1e-4)]:
        P = null_space_projector(C, THRESHOLD, dtype=dtype)
        got = alphaedit_delta(K, R, P, Kp @ Kp.T, l2, dtype=dtype)
        assert got.dtype == F64 and got.shape == (D_OUT, D_IN)
        assert float((got @ U_keep).norm() / got.norm()) < ann_tol, dtype
        assert _rel(got, want) < eq_tol, dtype


def test_alphaedit_prev_kkt_none_is_zero_and_matters() -> None:
    g = _gen(11)
    C, _ = _spectrum(g, EIGS)
    K, R = _randn(g, D_IN, N), _randn(g, D_OUT, N)
    P = null_space_projector(C, THRESHOLD, dtype=F64)
    zero = alphaedit_delta(K, R, P, torch.zeros(D_IN, D_IN, dtype=F64), 10.0, dtype=F64)
    assert torch.allclose(alphaedit_delta(K, R, P, None, 10.0, dtype=F64), zero, rtol=1e-14, atol=0)
    Kp = 3 * _randn(g, D_IN, 6)
    assert _rel(alphaedit_delta(K, R, P, Kp @ Kp.T, 10.0, dtype=F64), zero) > 1e-3


# --------------------------------------------------------------------------------------------------
# ROME


def test_rome_rank_one_and_maps_key_to_target() -> None:
    g = _gen(12)
    C = _spd(g)
    W = _randn(g, D_OUT, D_IN)
    k_star, k_bare, residual = _randn(g, D_IN), _randn(g, D_IN), _randn(g, D_OUT)
    v_star = W @ k_bare + residual
    dW = rome_delta(k_star, k_bare, residual, C)
    assert dW.shape == (D_OUT, D_IN) and dW.dtype == F64
    assert int(torch.linalg.matrix_rank(dW)) == 1
    assert _rel((W + dW) @ k_bare, v_star) < 1e-10
    # the original ROME does not map k_star to W k_star + residual (the key inconsistency) ...
    assert _rel(dW @ k_star, residual) > 1e-3
    # ... r-ROME does
    dW_r = rome_delta(k_star, None, residual, C, consistent_keys=True)
    assert _rel(dW_r @ k_star, residual) < 1e-10


def test_rome_is_one_edit_emmet() -> None:
    """r-ROME = the minimum-C-norm update with ΔW k = r = EMMET's equality-constrained solve with n = 1."""
    g = _gen(13)
    C = _spd(g)
    k, r = _randn(g, D_IN), _randn(g, D_OUT)
    got = rome_delta(k, k, r, C, consistent_keys=True)
    assert _rel(got, emmet_delta(k[:, None], r[:, None], C, 0.0)) < 1e-10
    Cinv_k = torch.linalg.solve(C, k)
    assert _rel(got, torch.outer(r, Cinv_k) / (k @ Cinv_k)) < 1e-10
    # with consistent keys k_bare is ignored
    assert torch.equal(rome_delta(k, _randn(g, D_IN), r, C, consistent_keys=True), got)


def test_rome_minimises_c_norm_among_feasible_updates() -> None:
    g = _gen(14)
    C = _spd(g)
    k, r = _randn(g, D_IN), _randn(g, D_OUT)
    dW = rome_delta(k, k, r, C, consistent_keys=True)

    def c_norm(M: torch.Tensor) -> float:
        return float(torch.trace(M @ C @ M.T))

    base = c_norm(dW)
    proj = torch.eye(D_IN, dtype=F64) - torch.outer(k, k) / (k @ k)
    for _ in range(20):
        Z = 0.1 * _randn(g, D_OUT, D_IN) @ proj
        assert torch.allclose((dW + Z) @ k, r, rtol=0, atol=1e-10)
        assert c_norm(dW + Z) > base


def test_rome_without_mom2_adjustment() -> None:
    g = _gen(15)
    k_star, k_bare, r = _randn(g, D_IN), _randn(g, D_IN), _randn(g, D_OUT)
    got = rome_delta(k_star, k_bare, r, None, mom2_adjustment=False)
    assert _rel(got, torch.outer(r, k_star) / (k_star @ k_bare)) < 1e-12
    with pytest.raises(ValueError, match="covariance"):
        rome_delta(k_star, k_bare, r, None)
    with pytest.raises(ValueError, match="k_bare"):
        rome_delta(k_star, None, r, None, mom2_adjustment=False)


# --------------------------------------------------------------------------------------------------
# D4S running sums


def _state_numel(rs: RunningSums) -> int:
    return sum(t.numel() for t in rs.state_dict().values())


def test_running_sums_equal_batched_memit() -> None:
    g = _gen(16)
    C = _spd(g)
    n = 9
    K, R = _randn(g, D_IN, n), _randn(g, D_OUT, n)
    pres = preservation_matrix(C, 4.0, norm_lambda=0.5)
    rs = RunningSums()
    for j in range(n):
        rs.add(6, K[:, j], R[:, j])
    assert rs.num_edits(6) == n and rs.num_edits(7) == 0
    want = memit_delta(K, R, pres)
    assert _rel(rs.delta(6, pres), want) < 1e-10
    # batches of mixed sizes, float32 inputs cast to float64 sums
    rs2 = RunningSums()
    for lo, hi in [(0, 4), (4, 5), (5, 9)]:
        rs2.add(6, K[:, lo:hi].float(), R[:, lo:hi].float())
    assert _rel(rs2.delta(6, pres), memit_delta(K.float(), R.float(), pres)) < 1e-10
    with pytest.raises(KeyError):
        rs.delta(3, pres)


def test_running_sums_state_dict_round_trip() -> None:
    g = _gen(17)
    C = _spd(g)
    pres = preservation_matrix(C, 2.0)
    rs = RunningSums()
    for layer in (3, 4):
        rs.add(layer, _randn(g, D_IN, 3), _randn(g, D_OUT, 3))
    buf = io.BytesIO()
    torch.save(rs.state_dict(), buf)
    buf.seek(0)
    restored = RunningSums()
    restored.load_state_dict(torch.load(buf))
    assert restored.layers() == [3, 4]
    for layer in (3, 4):
        assert restored.num_edits(layer) == 3
        assert torch.equal(restored.delta(layer, pres), rs.delta(layer, pres))
    # continuing after the restore gives the same sums as continuing the original
    k, r = _randn(g, D_IN, 2), _randn(g, D_OUT, 2)
    rs.add(4, k, r)
    restored.add(4, k, r)
    assert torch.equal(restored.delta(4, pres), rs.delta(4, pres))
    # the state dict is a copy: mutating the live object does not change a saved state
    sd = rs.state_dict()
    rs.add(3, k, r)
    assert not torch.equal(sd["s_kk.3"], rs.state_dict()["s_kk.3"])
    with pytest.raises(ValueError, match="incomplete"):
        RunningSums().load_state_dict({"s_rk.1": torch.zeros(2, 2)})


def test_running_sums_memory_constant_in_edits() -> None:
    g = _gen(18)
    rs = RunningSums()
    rs.add(0, _randn(g, D_IN), _randn(g, D_OUT))
    size_one = _state_numel(rs)
    for _ in range(50):
        rs.add(0, _randn(g, D_IN), _randn(g, D_OUT))
    assert rs.num_edits(0) == 51
    assert _state_numel(rs) == size_one == D_OUT * D_IN + D_IN * D_IN + 1


# --------------------------------------------------------------------------------------------------
# spreading


def test_spread_divisor() -> None:
    assert spread_divisor("divide", 5) == 5.0
    assert spread_divisor("sqrt", 4) == 2.0
    assert spread_divisor("sqrt", 2) == pytest.approx(math.sqrt(2))
    assert spread_divisor("none", 7) == 1.0
    with pytest.raises(ConfigError, match="valid choices"):
        spread_divisor("half", 3)
    with pytest.raises(ValueError):
        spread_divisor("divide", 0)
