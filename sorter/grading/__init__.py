"""Grading: a crop in, a grade and a bin out (classifier, metadata, policy, metrics).

The LiteRT model and its metadata, the policy that turns scores into a bin (uncertain means
reject), and the one numpy-only metrics module that training and the scorecard share.
"""
