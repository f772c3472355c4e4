"""The HTTP face and persistence layer of taskgrouper (see README, "Developer" section).

Nothing in ``app`` imports torch or transformers: the API process stays light and enqueues work by
task name; the science lives in ``models``.
"""
