-- hazard: GRANT to another service's role, outside the topology
-- expect: contract/grant-outside-topology line 3
GRANT SELECT ON orders TO user_service_role;
