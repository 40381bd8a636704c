// Upstream stand-in helper for benches/run.sh: `/__capture` answers with the
// signing headers and the exact body it received, so the script can check
// that signgate and nginx+njs send the same signed request (it recomputes
// nothing itself).
function capture(r) {
    r.return(200, JSON.stringify({
        api_key: r.headersIn['X-API-KEY'] || null,
        timestamp: r.headersIn['X-TIMESTAMP'] || null,
        signature: r.headersIn['X-SIGNATURE'] || null,
        content_type: r.headersIn['Content-Type'] || null,
        body: r.requestText || '',
    }));
}

export default {capture};
