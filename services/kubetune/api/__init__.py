"""kubetune's API types, one package per version of the kubetune.dev API group (``v1alpha1`` now), as Kubernetes
projects lay out their API groups: a later version sits beside it, with a conversion between the two."""
