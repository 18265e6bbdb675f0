//! Kernel plumbing shared by the plugins.
