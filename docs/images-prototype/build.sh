#!/bin/bash
# Prototype: bootable, byte-reproducible Debian bookworm disk images without
# mounting anything and without loop devices.
#
#   build.sh amd64 OUTDIR      -> OUTDIR/disk.raw, OUTDIR/disk.qcow2 (GPT, UEFI, systemd-boot)
#   build.sh rpi4  OUTDIR      -> OUTDIR/sd.img (MBR, FAT32 firmware partition + ext4 root)
#   build.sh boot  OUTDIR [PORT] -> boots OUTDIR/disk.qcow2 (overlay) with OVMF under TCG,
#                                  waits for the serial marker, tries SSH
#
# Env: EPOCH (SOURCE_DATE_EPOCH, default 2025-01-01), REINSTALL=1 (ignore the
# cached installed-rootfs tarball and install packages again from the cached base).
#
# Every heavy command runs under `nice -n 19 ionice -c3`.
set -euo pipefail
shopt -s inherit_errexit   # else failures inside $(installed_tar ...) are ignored

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=$HERE/cache
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
EPOCH=${EPOCH:-1735689600}          # 2025-01-01T00:00:00Z
export SOURCE_DATE_EPOCH=$EPOCH
export LC_ALL=C TZ=UTC
NICE=(nice -n 19 ionice -c3)

# Fixed identifiers (anything random in a disk image must be pinned)
DISK_GUID=8b2d1f3e-6a41-4c1e-9b55-0d6f1a2b3c4d
ESP_PARTUUID=c12a7328-0000-4000-8000-000000000001
ROOT_PARTUUID=4f68bce3-0000-4000-8000-000000000002
ROOT_FSUUID=2b7e1516-28ae-4d2a-abf7-158809cf4f3c
ESP_SERIAL=5EED0001
RPI_LABEL_ID=0x5eed0002
RPI_FAT_SERIAL=5EED0003
RPI_FSUUID=3c8f2a11-5b6d-4e7f-8a9b-0c1d2e3f4a5b

PKGS_AMD64="linux-image-amd64 systemd-sysv udev dbus openssh-server systemd-boot-efi iproute2 zstd"
PKGS_ARM64="linux-image-arm64 raspi-firmware systemd-sysv udev dbus openssh-server iproute2 zstd"

log() { echo "[$(date +%T)] $*" >&2; }
TIMINGS=/dev/null
step() {   # step NAME cmd...  -> runs cmd, appends "NAME seconds" to $TIMINGS
  local name=$1; shift; local t0=$(date +%s.%N)
  # no `|| rc=$?` here: that would switch off errexit inside the called function
  log "BEGIN $name"; "$@"
  local dt=$(echo "$(date +%s.%N) - $t0" | bc)
  printf '%-28s %7.1f s\n' "$name" "$dt" | tee -a "$TIMINGS" >&2
}
in_chroot() {  # in_chroot ROOT cmd...  (no /proc, /sys or /dev mounts needed)
  local r=$1; shift
  "${NICE[@]}" chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
      DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8 TZ=UTC \
      SOURCE_DATE_EPOCH=$EPOCH "$@"
}

# Without /proc in the chroot `ischroot` cannot decide (exit 2 = "false"), and hooks such as
# raspi-firmware's z50 then demand a mounted /boot/firmware and fail the kernel postinst.
# Instead of bind-mounting /proc, make ischroot answer "yes" while we build.
fake_ischroot() {  # fake_ischroot ROOT on|off
  local r=$1
  if [ "$2" = on ]; then
    [ -e "$r/ischroot.orig" ] || mv "$r/usr/bin/ischroot" "$r/ischroot.orig"
    printf '#!/bin/sh\nexit 0\n' > "$r/usr/bin/ischroot"; chmod 755 "$r/usr/bin/ischroot"
  elif [ -e "$r/ischroot.orig" ]; then
    mv -f "$r/ischroot.orig" "$r/usr/bin/ischroot"
  fi
}

# ---------------------------------------------------------------- stage 1
# debootstrap --variant=minbase, cached as a tarball (and the .debs in cache/debs-ARCH)
base_tar() {
  local arch=$1 tar=$CACHE/base-$1.tar
  [ -f "$tar" ] && { echo "$tar"; return; }
  local d=$HERE/work/debootstrap-$arch; rm -rf "$d"; mkdir -p "$CACHE/debs-$arch"
  local comp=main; [ "$arch" = arm64 ] && comp=main,non-free-firmware
  step "debootstrap-$arch" "${NICE[@]}" debootstrap --arch="$arch" --variant=minbase \
      --components=$comp --cache-dir="$CACHE/debs-$arch" "$SUITE" "$d" "$MIRROR" >&2
  "${NICE[@]}" tar -C "$d" --numeric-owner --xattrs --acls -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
  rm -rf "$d"; echo "$tar"
}

# ---------------------------------------------------------------- stage 2
# package installation in a chroot; result cached as a tarball keyed by the package list
installed_tar() {
  local arch=$1 pkgs=$2 key tar d
  key=$(echo "$SUITE $arch $pkgs" | sha256sum | cut -c1-12)
  tar=$CACHE/installed-$arch-$key.tar
  if [ -f "$tar" ] && [ "${REINSTALL:-0}" != 1 ]; then echo "$tar"; return; fi
  local base; base=$(base_tar "$arch")
  d=$HERE/work/install-$arch; rm -rf "$d"; mkdir -p "$d"
  "${NICE[@]}" tar -C "$d" --numeric-owner --xattrs --acls -xf "$base"
  printf '#!/bin/sh\nexit 101\n' > "$d/usr/sbin/policy-rc.d"; chmod 755 "$d/usr/sbin/policy-rc.d"
  local comp=main; [ "$arch" = arm64 ] && comp="main non-free-firmware"
  echo "deb $MIRROR $SUITE $comp" > "$d/etc/apt/sources.list"
  # reuse downloaded .debs between runs
  mkdir -p "$CACHE/apt-archives-$arch"
  cp -n "$CACHE/apt-archives-$arch"/*.deb "$d/var/cache/apt/archives/" 2>/dev/null || true
  cp /etc/resolv.conf "$d/etc/resolv.conf"
  # No initramfs at install time: it is generated once, per image, in stage 3 (under
  # qemu-user an arm64 MODULES=most mkinitramfs takes ~15 min, so doing it twice hurts).
  in_chroot "$d" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
  printf '#!/bin/sh\necho "update-initramfs: diverted during image build" >&2\n' > "$d/usr/sbin/update-initramfs"
  chmod 755 "$d/usr/sbin/update-initramfs"
  fake_ischroot "$d" on
  step "apt-install-$arch" in_chroot "$d" sh -c \
    "apt-get update -q && apt-get install -y -q --no-install-recommends $pkgs" >&2
  fake_ischroot "$d" off
  rm -f "$d/usr/sbin/update-initramfs"
  in_chroot "$d" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
  cp -n "$d"/var/cache/apt/archives/*.deb "$CACHE/apt-archives-$arch/" 2>/dev/null || true
  in_chroot "$d" apt-get clean
  "${NICE[@]}" tar -C "$d" --numeric-owner --xattrs --acls -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
  rm -rf "$d"; echo "$tar"
}

# ---------------------------------------------------------------- stage 3
# image-specific configuration + removal/normalisation of non-reproducible state
configure_common() {
  local r=$1 rootdev=$2
  echo debian-img > "$r/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian-img\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$r/etc/hosts"
  rm -f "$r/etc/resolv.conf"     # host's copy; networkd has no resolved in bookworm -> leave absent
  printf '%s / ext4 defaults,errors=remount-ro 0 1\n' "$rootdev" > "$r/etc/fstab"
  # mkinitramfs cannot resolve PARTUUID= inside a chroot -> tell it the root fs type so the
  # fsck hook puts e2fsck into the initramfs ("W: Couldn't identify type of root file system")
  echo FSTYPE=ext4 > "$r/etc/initramfs-tools/conf.d/fstype"

  # network: any en* NIC via DHCP (q35 virtio-net is enp0sN)
  mkdir -p "$r/etc/systemd/network"
  printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' > "$r/etc/systemd/network/20-wired.network"

  # SSH: no host keys in the image, generate at first boot
  rm -f "$r"/etc/ssh/ssh_host_*
  cat > "$r/etc/systemd/system/ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target ssh.service
EOF
  cat > "$r/etc/systemd/system/orchestrate-boot-ok.service" <<'EOF'
[Unit]
Description=Print boot marker on the serial console
After=multi-user.target ssh.service systemd-networkd.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo ORCHESTRATE-BOOT-OK > /dev/ttyS0; echo ORCHESTRATE-BOOT-OK > /dev/console'

[Install]
WantedBy=multi-user.target
EOF
  # only an ed25519 host key: RSA-3072 generation takes >60 s under TCG
  echo 'HostKey /etc/ssh/ssh_host_ed25519_key' > "$r/etc/ssh/sshd_config.d/10-hostkey.conf"
  in_chroot "$r" systemctl enable systemd-networkd.service ssh-hostkeys.service orchestrate-boot-ok.service >&2
  # e2scrub_reap (LVM snapshot cleanup) took ~80 s of a TCG boot and is useless here
  in_chroot "$r" systemctl mask e2scrub_reap.service >&2
  # test key for root (fixed, lives in cache/ so rebuilds are identical)
  [ -f "$CACHE/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C img-proto -f "$CACHE/id_ed25519"
  install -d -m 700 "$r/root/.ssh"
  install -m 600 "$CACHE/id_ed25519.pub" "$r/root/.ssh/authorized_keys"
}

normalise() {   # remove / pin everything that differs between two builds
  local r=$1
  rm -f "$r/usr/sbin/policy-rc.d"
  : > "$r/etc/machine-id"                        # empty => systemd generates it at first boot
  rm -f "$r/var/lib/dbus/machine-id"; ln -s /etc/machine-id "$r/var/lib/dbus/machine-id"
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb
  rm -f "$r"/var/cache/ldconfig/aux-cache
  rm -f "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/etc/*-
  find "$r/var/log" -type f -delete
  rm -rf "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.bash_history
  find "$r" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
  rm -f "$r/var/lib/systemd/random-seed" "$r/var/lib/systemd/catalog/database"
  # days-since-epoch "last password change" written by useradd/adduser
  local day=$((EPOCH / 86400))
  sed -i -E "s/^([^:]*:[^:]*:)[0-9]+:/\1${day}:/" "$r/etc/shadow"
  # clamp mtimes newer than EPOCH (files created by the build); keep package mtimes
  find "$r" -xdev -newermt "@$EPOCH" -print0 | xargs -0r touch --no-dereference --date="@$EPOCH"
}

initramfs() {   # (re)generate reproducibly (mkinitramfs honours SOURCE_DATE_EPOCH)
  local r=$1 k
  rm -f "$r"/boot/initrd.img-*
  fake_ischroot "$r" on
  for k in $(ls -1 "$r/lib/modules"); do
    step "initramfs-$k" in_chroot "$r" update-initramfs -c -k "$k" >&2
  done
  fake_ischroot "$r" off
  touch --no-dereference --date="@$EPOCH" "$r"/boot/initrd.img-*
}

# ---------------------------------------------------------------- stage 4
mkext4() {   # mkext4 ROOTDIR OUT SIZE_MIB UUID LABEL
  local src=$1 out=$2 mib=$3 uuid=$4 label=$5
  rm -f "$out"
  E2FSPROGS_FAKE_TIME=$EPOCH "${NICE[@]}" mke2fs -q -t ext4 -F -d "$src" -L "$label" -U "$uuid" \
    -E hash_seed=$uuid,root_owner=0:0,nodiscard -b 4096 -I 256 "$out" "${mib}M"
  # ctime/atime come from the source tree: pin them (and mtime/crtime) for every inode
  ( cd "$src" && find . -xdev -printf '%P\0' ) |
    python3 -c '
import sys
e = sys.argv[1]
print("sif / atime @%s\nsif / ctime @%s\nsif / mtime @%s" % (e, e, e))
for p in sys.stdin.buffer.read().split(b"\0"):
    if not p: continue
    p = p.decode("utf-8", "surrogateescape")
    assert "\"" not in p and "\n" not in p, p
    for f in ("atime", "ctime", "crtime"):
        print("sif \"/%s\" %s @%s" % (p, f, e))
' "$EPOCH" > "$out.debugfs"
  for f in atime ctime mtime crtime; do echo "sif /lost+found $f @$EPOCH"; done >> "$out.debugfs"
  E2FSPROGS_FAKE_TIME=$EPOCH "${NICE[@]}" debugfs -w -f "$out.debugfs" "$out" > "$out.debugfs.log" 2>&1
  if grep -v '^debugfs' "$out.debugfs.log" | grep -q .; then
    log "debugfs complained:"; grep -v '^debugfs' "$out.debugfs.log" | head >&2; return 1; fi
  E2FSPROGS_FAKE_TIME=$EPOCH "${NICE[@]}" e2fsck -fn "$out" >&2
}

mkfat() {    # mkfat SRCDIR OUT SIZE_MIB SERIAL LABEL  (copies SRCDIR/* to the FAT root)
  local src=$1 out=$2 mib=$3 serial=$4 label=$5
  rm -f "$out"; truncate -s "${mib}M" "$out"
  "${NICE[@]}" mkfs.vfat -F 32 -n "$label" --invariant -i "$serial" "$out" >&2
  export MTOOLS_SKIP_CHECK=1
  # mcopy -s recurses, -m keeps mtimes (already clamped), -b batch; sorted order for stable dir layout
  ( cd "$src" && find . -mindepth 1 -type d -printf '%P\n' | sort ) | while read -r d; do
      mmd -i "$out" "::/$d"; done
  ( cd "$src" && find . -type f -printf '%P\n' | sort ) | while read -r f; do
      "${NICE[@]}" mcopy -m -o -i "$out" "$src/$f" "::/$f"; done
  fsck.vfat -n "$out" >&2
}

assemble_gpt() {   # assemble_gpt ESP.img ROOT.img DISK.raw
  local esp=$1 root=$2 out=$3
  local esp_s=$(( $(stat -c %s "$esp") / 512 )) root_s=$(( $(stat -c %s "$root") / 512 ))
  local start1=2048 start2=$((2048 + esp_s))
  rm -f "$out"; truncate -s $(( (start2 + root_s + 2048) * 512 )) "$out"
  "${NICE[@]}" sfdisk -q --no-reread --no-tell-kernel "$out" >&2 <<EOF
label: gpt
label-id: $DISK_GUID
unit: sectors
first-lba: 2048
sector-size: 512

start=$start1, size=$esp_s, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$ESP_PARTUUID, name="ESP"
start=$start2, size=$root_s, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$ROOT_PARTUUID, name="root"
EOF
  "${NICE[@]}" dd if="$esp" of="$out" bs=1M seek=$((start1 / 2048)) conv=notrunc,sparse status=none
  "${NICE[@]}" dd if="$root" of="$out" bs=1M seek=$((start2 / 2048)) conv=notrunc,sparse status=none
}

assemble_mbr() {   # assemble_mbr FAT.img ROOT.img DISK.raw
  local fat=$1 root=$2 out=$3
  local fat_s=$(( $(stat -c %s "$fat") / 512 )) root_s=$(( $(stat -c %s "$root") / 512 ))
  local start1=8192 start2=$((8192 + fat_s))
  rm -f "$out"; truncate -s $(( (start2 + root_s) * 512 )) "$out"
  "${NICE[@]}" sfdisk -q --no-reread --no-tell-kernel "$out" >&2 <<EOF
label: dos
label-id: $RPI_LABEL_ID
unit: sectors

start=$start1, size=$fat_s, type=c, bootable
start=$start2, size=$root_s, type=83
EOF
  "${NICE[@]}" dd if="$fat" of="$out" bs=1M seek=$((start1 / 2048)) conv=notrunc,sparse status=none
  "${NICE[@]}" dd if="$root" of="$out" bs=1M seek=$((start2 / 2048)) conv=notrunc,sparse status=none
}

# ---------------------------------------------------------------- targets
build_amd64() {
  local out=$1; mkdir -p "$out"; out=$(cd "$out" && pwd)
  TIMINGS=$out/timings.txt; : > "$TIMINGS"
  local tar; tar=$(installed_tar amd64 "$PKGS_AMD64")
  local r=$out/rootfs; rm -rf "$r"; mkdir -p "$r"
  step extract-rootfs "${NICE[@]}" tar -C "$r" --numeric-owner --xattrs --acls -xf "$tar"
  step configure configure_common "$r" "PARTUUID=$ROOT_PARTUUID"
  initramfs "$r"
  step normalise normalise "$r"

  # ESP: systemd-boot as the removable-media loader + type-1 entry, kernel+initrd on the ESP
  local esp=$out/esp; rm -rf "$esp"; mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries"
  local kver; kver=$(basename "$(ls -1 "$r"/boot/vmlinuz-* | sort -V | tail -1)"); kver=${kver#vmlinuz-}
  cp "$r/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$esp/EFI/BOOT/BOOTX64.EFI"
  cp "$r/boot/vmlinuz-$kver" "$esp/vmlinuz"
  cp "$r/boot/initrd.img-$kver" "$esp/initrd.img"
  printf 'default debian.conf\ntimeout 0\n' > "$esp/loader/loader.conf"
  printf 'title Debian %s\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=PARTUUID=%s rw console=tty0 console=ttyS0,115200\n' \
      "$kver" "$ROOT_PARTUUID" > "$esp/loader/entries/debian.conf"
  find "$esp" -exec touch --no-dereference --date="@$EPOCH" {} +

  step mkfat-esp mkfat "$esp" "$out/esp.img" 128 "$ESP_SERIAL" ESP
  step mkext4-root mkext4 "$r" "$out/root.img" 1536 "$ROOT_FSUUID" rootfs
  step assemble-gpt assemble_gpt "$out/esp.img" "$out/root.img" "$out/disk.raw"
  step qcow2-convert "${NICE[@]}" qemu-img convert -f raw -O qcow2 "$out/disk.raw" "$out/disk.qcow2"
  sfdisk --json "$out/disk.raw" > "$out/disk.sfdisk.json"
  ( cd "$out" && sha256sum disk.raw disk.qcow2 esp.img root.img | tee SHA256SUMS ) >&2
}

build_rpi4() {
  local out=$1; mkdir -p "$out"; out=$(cd "$out" && pwd)
  TIMINGS=$out/timings.txt; : > "$TIMINGS"
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || {
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 || true; }
  local tar; tar=$(installed_tar arm64 "$PKGS_ARM64")
  local r=$out/rootfs; rm -rf "$r"; mkdir -p "$r"
  step extract-rootfs "${NICE[@]}" tar -C "$r" --numeric-owner --xattrs --acls -xf "$tar"
  local rootdev="PARTUUID=${RPI_LABEL_ID#0x}-02"
  # raspi-firmware's hooks write /boot/firmware/{cmdline,config}.txt from /etc/default/raspi-firmware
  # (in a chroot it would fall back to root=/dev/mmcblk0p2 and add cma=64M, which the
  #  file itself warns can make a Pi 4 unbootable; GPU_FREQ=360 keeps the UART baud rate stable)
  sed -i -E "s|^#?ROOTPART=.*|ROOTPART=$rootdev|; s|^#?CONSOLES=.*|CONSOLES=\"tty0 ttyS1,115200\"|; \
             s|^#?CMA=.*|CMA=0|; s|^#?GPU_FREQ=.*|GPU_FREQ=360|" "$r/etc/default/raspi-firmware"
  step configure configure_common "$r" "$rootdev"
  if [ "${RPI_INITRAMFS_MODULES:-most}" = list ]; then
    # MODULES=most runs ~1000 modules through per-module helper processes: >35 min under
    # qemu-user on this machine. MODULES=list + the modules a Pi 4 needs to mount an ext4 root
    # from SD (emmc2 = sdhci-iproc) or USB (PCIe xhci via pcie-brcmstb) is ~1-2 min.
    sed -i -E 's/^MODULES=.*/MODULES=list/' "$r/etc/initramfs-tools/initramfs.conf"
    printf '%s\n' sdhci-iproc mmc_block ext4 crc32c_generic reset-raspberrypi pcie-brcmstb \
        xhci-pci usb-storage uas sd_mod >> "$r/etc/initramfs-tools/modules"
  fi
  initramfs "$r"     # also triggers /etc/initramfs/post-update.d/z50-raspi-firmware -> /boot/firmware
  step normalise normalise "$r"
  find "$r/boot/firmware" -exec touch --no-dereference --date="@$EPOCH" {} +
  step mkfat-boot mkfat "$r/boot/firmware" "$out/boot.img" 256 "$RPI_FAT_SERIAL" RASPIFIRM
  # the FAT partition is mounted at /boot/firmware on the device; keep the dir empty in root
  local rr=$out/rootfs-noboot; rm -rf "$rr"; cp -a "$r" "$rr"; rm -rf "$rr"/boot/firmware/*
  printf '%s /boot/firmware vfat defaults 0 2\n' "LABEL=RASPIFIRM" >> "$rr/etc/fstab"
  touch --no-dereference --date="@$EPOCH" "$rr/etc/fstab" "$rr/boot/firmware"
  step mkext4-root mkext4 "$rr" "$out/root.img" 1536 "$RPI_FSUUID" rootfs
  step assemble-mbr assemble_mbr "$out/boot.img" "$out/root.img" "$out/sd.img"
  sfdisk --json "$out/sd.img" > "$out/sd.sfdisk.json"
  ( cd "$out" && sha256sum sd.img boot.img root.img | tee SHA256SUMS ) >&2
}

boot_amd64() {   # boot_amd64 OUTDIR [PORT]
  local out; out=$(cd "$1" && pwd); local port=${2:-2222}
  TIMINGS=$out/timings.txt
  qemu-img create -q -f qcow2 -b "$out/disk.qcow2" -F qcow2 "$out/boot-overlay.qcow2"
  cp /usr/share/OVMF/OVMF_VARS.fd "$out/OVMF_VARS.fd"
  : > "$out/serial.log"
  local t0; t0=$(date +%s.%N)
  "${NICE[@]}" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -smp 2 -m 1024 \
    -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \
    -drive if=pflash,format=raw,unit=1,file="$out/OVMF_VARS.fd" \
    -drive file="$out/boot-overlay.qcow2",if=virtio,format=qcow2 \
    -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22 -device virtio-net-pci,netdev=n0 \
    -serial file:"$out/serial.log" -display none -monitor none \
    -pidfile "$out/qemu.pid" -daemonize
  local pid; pid=$(cat "$out/qemu.pid"); log "qemu pid $pid"
  local ok=0
  for _ in $(seq 1 600); do
    if grep -qa ORCHESTRATE-BOOT-OK "$out/serial.log"; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || break; sleep 1
  done
  local dt; dt=$(echo "$(date +%s.%N) - $t0" | bc)
  printf '%-28s %7.1f s (marker=%s)\n' boot-to-marker "$dt" "$ok" | tee -a "$TIMINGS" >&2
  local sshok=0
  for _ in $(seq 1 60); do
    if ssh -q -i "$CACHE/id_ed25519" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o ConnectTimeout=5 -o BatchMode=yes root@127.0.0.1 \
         'uname -a; cat /etc/machine-id; ls /etc/ssh/ssh_host_*key; systemctl is-system-running; ip -br a; systemd-analyze; systemd-analyze blame | head -n 8' \
         > "$out/ssh.out" 2>&1; then sshok=1; break; fi
    sleep 2
  done
  dt=$(echo "$(date +%s.%N) - $t0" | bc)
  printf '%-28s %7.1f s (ssh=%s)\n' boot-to-ssh "$dt" "$sshok" | tee -a "$TIMINGS" >&2
  cat "$out/ssh.out" >&2
  [ "$sshok" = 1 ] && ssh -q -i "$CACHE/id_ed25519" -p "$port" -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null root@127.0.0.1 'systemctl poweroff' || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill "$pid" 2>/dev/null || true
  [ "$ok" = 1 ]
}

case ${1:-} in
  amd64) build_amd64 "${2:?outdir}" ;;
  rpi4)  build_rpi4 "${2:?outdir}" ;;
  boot)  boot_amd64 "${2:?outdir}" "${3:-2222}" ;;
  *) echo "usage: $0 amd64|rpi4|boot OUTDIR [PORT]" >&2; exit 2 ;;
esac
