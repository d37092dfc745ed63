"""Locate-then-edit machinery: keys, targets, covariance, closed-form solvers, algorithms, wrappers."""
