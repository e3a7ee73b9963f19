#!/usr/bin/env python3
"""Compare two root trees by metadata + content (what mke2fs -d would copy).
usage: treediff.py DIR_A DIR_B   -> prints differing paths with the kind of difference."""
import hashlib, os, stat, sys


def walk(root):
    out = {}
    for dp, dns, fns in os.walk(root):
        dns.sort()
        for n in [""] + dns + fns if dp == root else dns + fns:
            p = os.path.join(dp, n) if n else dp
            rel = "/" + os.path.relpath(p, root) if p != root else "/"
            st = os.lstat(p)
            d = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                 "mtime": int(st.st_mtime), "nlink": st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0}
            if stat.S_ISLNK(st.st_mode):
                d["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for b in iter(lambda: f.read(1 << 20), b""):
                        h.update(b)
                d["sha"] = h.hexdigest()[:16]
                d["size"] = st.st_size
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                d["rdev"] = st.st_rdev
            try:
                d["xattr"] = sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                    for k in os.listxattr(p, follow_symlinks=False))
            except OSError:
                pass
            out[rel] = d
    return out


a, b = walk(sys.argv[1]), walk(sys.argv[2])
for p in sorted(set(a) | set(b)):
    if p not in a:
        print("only-B ", p)
    elif p not in b:
        print("only-A ", p)
    elif a[p] != b[p]:
        keys = sorted(k for k in set(a[p]) | set(b[p]) if a[p].get(k) != b[p].get(k))
        print("differ ", p, ",".join(keys))
