"""Interface side: the TUN/TAP device (opened with fcntl.ioctl) and its link settings via pyroute2."""
