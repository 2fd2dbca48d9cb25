"""An adapter artifact: where it is (:mod:`.uri`), whether loraq can serve it (:mod:`.checks`),
and how its files reach local disk (:mod:`.store`).

Torch-free and one place for both sides: the gateway validates an adapter at
registration with these modules, and the worker finds and fetches it with the
same ones, so a URI the gateway accepts is one the worker can read.
"""
