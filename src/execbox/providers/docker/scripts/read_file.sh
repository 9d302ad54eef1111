p=$(realpath -e -- "$1" 2>/dev/null) || exit 3
case $p in /work/*) ;; *) exit 3;; esac
[ "$p" = "/work/$1" ] && [ -f "$p" ] || exit 3
head -c "$2" -- "$p"
