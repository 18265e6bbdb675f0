//! Synchronous rtnetlink socket.
