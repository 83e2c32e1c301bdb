"""edgefleet.cross: Debian sysroots, cross toolchains and QEMU so ARM packages run in tests on x86."""
