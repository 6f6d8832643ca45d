#!/bin/sh
. /vm-results/env
echo "vm-check up PASS $(uname -r) $UMLBR"
ls /lib/modules/$(uname -r) | head -3
modprobe tun && ls -la /dev/net/tun
