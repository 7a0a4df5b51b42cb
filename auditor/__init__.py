"""Instructional-fingerprint auditor: prove that a chat API serves your model.

Importing this package is cheap: no torch, no SDKs. Heavy imports happen where used.
"""

__version__ = "0.1.0"
