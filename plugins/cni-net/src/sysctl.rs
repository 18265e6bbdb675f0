//! /proc/sys/net access.
