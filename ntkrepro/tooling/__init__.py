"""Tooling: the ``ntkrepro`` command line (:mod:`.cli`) and the book build (:mod:`.book`,
:mod:`.status`). It imports the reproduction layer (config, results, claims); nothing in
the package, and no notebook, imports it."""
