-- realtime.broadcast_changes from a row-level trigger: the canonical Supabase pattern.
CREATE EXTENSION realtime;

CREATE TABLE public.todos (id int PRIMARY KEY, title text, done boolean DEFAULT false);
CREATE FUNCTION public.todos_broadcast() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM realtime.broadcast_changes('todos:' || coalesce(NEW.id, OLD.id)::text, TG_OP, TG_OP,
                                     TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL);
  RETURN NULL;
END $$;
CREATE TRIGGER todos_broadcast AFTER INSERT OR UPDATE OR DELETE ON public.todos
  FOR EACH ROW EXECUTE FUNCTION public.todos_broadcast();

INSERT INTO public.todos (id, title) VALUES (1, 'write tests');
UPDATE public.todos SET done = true WHERE id = 1;
DELETE FROM public.todos WHERE id = 1;

-- INSERT has old_record null, DELETE has record null; private by default; the id rule applies.
SELECT topic, event, private, payload - 'id' AS payload, (payload->>'id')::uuid = id AS id_rule
FROM realtime.messages ORDER BY inserted_at;

-- Statement-level triggers are refused, and so is the statement.
CREATE FUNCTION public.todos_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM realtime.broadcast_changes('todos', TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NULL, NULL, TG_LEVEL);
  RETURN NULL;
END $$;
CREATE TRIGGER todos_statement AFTER INSERT ON public.todos
  FOR EACH STATEMENT EXECUTE FUNCTION public.todos_statement();
INSERT INTO public.todos (id, title) VALUES (2, 'never stored');
SELECT count(*) FROM public.todos;
DROP TRIGGER todos_statement ON public.todos;

-- Unknown and missing operations are refused.
SELECT realtime.broadcast_changes('t', 'e', 'TRUNCATE', 'todos', 'public', NULL, NULL);
SELECT realtime.broadcast_changes('t', 'e', NULL, 'todos', 'public', NULL, NULL);

-- Called directly with records: level defaults to ROW.
SELECT realtime.broadcast_changes('direct', 'ev', 'UPDATE', 'todos', 'public',
                                  ROW(3, 'new', true)::public.todos, ROW(3, 'old', false)::public.todos);
SELECT payload - 'id' AS payload FROM realtime.messages WHERE topic = 'direct';

-- A denied send inside the trigger warns and the user's write still commits.
GRANT ALL ON public.todos TO authenticated;
SET ROLE authenticated;
INSERT INTO public.todos (id, title) VALUES (4, 'kept despite the denied broadcast');
RESET ROLE;
SELECT id, title FROM public.todos;
