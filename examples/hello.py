import sys, platform
print(f"hello from python {platform.python_version()}")
