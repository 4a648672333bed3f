-- The example shop's tables. Audited with:
--   audit-mw track users orders --exclude users.password_hash

-- name: schema
CREATE TABLE IF NOT EXISTS users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email          text NOT NULL UNIQUE,
    display_name   text NOT NULL,
    password_hash  text NOT NULL,
    role           text NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'admin')),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id),
    item        text NOT NULL,
    quantity    integer NOT NULL CHECK (quantity > 0),
    unit_price  numeric(10, 2) NOT NULL CHECK (unit_price >= 0),
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'cancelled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- name: grant_app
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, INSERT, UPDATE ON users, orders TO {role};

-- name: insert_user
INSERT INTO users (email, display_name, password_hash, role)
VALUES (%(email)s, %(display_name)s, %(password_hash)s, %(role)s)
ON CONFLICT (email) DO NOTHING;

-- name: user_by_email
SELECT id, email, display_name, password_hash, role FROM users WHERE email = %(email)s;

-- name: set_role
UPDATE users SET role = %(role)s WHERE id = %(id)s RETURNING id, email, role;

-- name: user_role
SELECT role FROM users WHERE id = %(id)s;

-- name: list_orders
SELECT id, user_id, item, quantity, unit_price, status FROM orders
WHERE user_id = %(user_id)s OR %(all)s
ORDER BY id;

-- name: create_order
INSERT INTO orders (user_id, item, quantity, unit_price)
VALUES (%(user_id)s, %(item)s, %(quantity)s, %(unit_price)s)
RETURNING id, user_id, item, quantity, unit_price, status;

-- name: update_order
UPDATE orders SET quantity = %(quantity)s, updated_at = now()
WHERE id = %(id)s AND (user_id = %(user_id)s OR %(all)s) AND status = 'open'
RETURNING id, user_id, item, quantity, unit_price, status;

-- name: cancel_order
UPDATE orders SET status = 'cancelled', updated_at = now()
WHERE id = %(id)s AND (user_id = %(user_id)s OR %(all)s) AND status = 'open'
RETURNING id, user_id, item, quantity, unit_price, status;
