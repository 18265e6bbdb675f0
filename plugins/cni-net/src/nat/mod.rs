//! NAT backends (iptables-restore, nftables).
