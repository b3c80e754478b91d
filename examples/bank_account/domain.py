"""The bank-account domain, the one sample domain: it lives in ``cqrs_conformance.bank_account``
(shipped with the conformance suite, which runs on it) and is re-exported here for the app."""

from cqrs_conformance.bank_account import *  # noqa: F403  (a re-export of the module's __all__)
