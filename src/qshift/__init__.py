"""QShift: test-time adaptation for cross-modal retrieval under query shift.

Library code shared by the pipeline stages (``stages/``), both orchestrators
(Snakemake and DVC), the tests and notebooks.
"""

__version__ = "0.1.0"
