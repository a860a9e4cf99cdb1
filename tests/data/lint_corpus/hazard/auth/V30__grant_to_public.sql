-- hazard: GRANT ... TO PUBLIC gives every role on the cluster access, outside the topology
-- expect: contract/grant-outside-topology line 3
GRANT SELECT ON orders TO PUBLIC;
