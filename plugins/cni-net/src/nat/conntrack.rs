//! Conntrack cleanup over NETLINK_NETFILTER (no `conntrack` binary).
