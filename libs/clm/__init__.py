"""CLM's shared libraries: the message contracts, the service runtime and (later) the policy core."""
