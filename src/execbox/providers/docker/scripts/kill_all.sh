kill -9 -1 2>/dev/null; kill -9 -1 2>/dev/null; exit 0
