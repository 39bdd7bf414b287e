"""The kubetune control plane: the kopf operator, the local runner and the ``kubetune`` command.

Layers point one way (import-linter enforces it): cli -> handlers/local -> planner -> builders -> constants,
all over the spec models of :mod:`kubetune.api.v1alpha1`. Nothing in ``kubetune`` imports from here.
"""
