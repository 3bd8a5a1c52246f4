"""The gRPC layer: servicers that convert between protos and the domain, and nothing more."""
