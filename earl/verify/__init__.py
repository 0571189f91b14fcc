"""Verifiers: turn (source, instruction, edited) into an auditable reward (see `earl.verify.base`).

Heavy parts (HTTP client, transformers) load only when a backend is built, so importing this
package is cheap.
"""

from earl.verify.base import VERIFIERS, EditRequest, RewardResult, Verifier, build_verifier

__all__ = ["VERIFIERS", "EditRequest", "RewardResult", "Verifier", "build_verifier"]
