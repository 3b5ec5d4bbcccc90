"""Compatibility shims that let ppdet 2.6.0 run on Paddle 3.x.

Every shim names the ppdet / Paddle / Pillow version that needs it and has a test in
``tests/unit/test_compat.py`` that fails without it. Nothing here changes Paddle's arithmetic.
"""
