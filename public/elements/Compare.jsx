// Side-by-side model comparison: one column per model, filled by app.py's /compare.
// `props` comes from rag.compare.CompareBoard.props().
export default function Compare() {
  const columns = props.columns || [];
  return (
    <div
      className="grid gap-3 w-full"
      style={{ gridTemplateColumns: `repeat(${Math.max(columns.length, 1)}, minmax(0, 1fr))` }}
    >
      {columns.map((c) => (
        <div key={c.model} className="rounded-md border p-3 text-sm" data-model={c.model}>
          <div className="font-semibold">{c.model}</div>
          <div className="text-xs opacity-70">{c.endpoint || c.status}</div>
          <div className="whitespace-pre-wrap mt-2 compare-answer">
            {c.text || (c.status === "waiting" ? "waiting for its turn…" : "")}
          </div>
          {c.error ? <div className="mt-2 text-red-600">{c.error}</div> : null}
          {c.figures ? <div className="mt-2 text-xs opacity-70 compare-figures">{c.figures}</div> : null}
        </div>
      ))}
    </div>
  );
}
