"""The five processes, each its own gRPC service and image: the gateway, the three funnel stages
(retrieval, ranking, re-ranking) and the events service. None imports another; they share the
`funnel` library, the generated protos and the artifact format."""
