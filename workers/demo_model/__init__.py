"""The tiny demo model loraq ships: a byte-level copy base and LoRA skills.

Importing this package must stay torch-free: the gateway and the CLI use
:mod:`workers.demo_model.skills` to check outputs by rule.
"""
