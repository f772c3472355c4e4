"""The science core of taskgrouper: data, fine-tuning, CKA, gradient alignment, grouping, verdicts.

Importing this package is cheap: torch and transformers are imported by the submodules that need
them, so light modules (``models.data``, ``models.grouping``, ``models.schema``) stay usable from a
process that must not load torch.
"""
