package replicator

const childEnv = "PREMIRROR_REPLICATOR_CHILD"

func runChild(role string) int { return 2 }
