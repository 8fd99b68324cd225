-- The engine nodes holding each SMPP connection now: a node renews its row every third of a
-- job lease and takes throughput / (live rows of the connection) as its share of the
-- connection's throughput, so the SMSC account's limit holds across the nodes together; a
-- killed node's row runs out after a lease and its share goes back to the others.
CREATE TABLE smpp_nodes (
    connection TEXT NOT NULL,
    node       TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (connection, node)
);
