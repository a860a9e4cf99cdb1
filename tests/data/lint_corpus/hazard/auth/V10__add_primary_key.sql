-- hazard: ADD PRIMARY KEY on an existing table builds its index under an ACCESS EXCLUSIVE lock
-- expect: squawk/adding-serial-primary-key-field line 3
ALTER TABLE order_lines ADD PRIMARY KEY (id);
